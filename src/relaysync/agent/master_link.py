"""The agent's control link to the master: register, receive assignments, report commits.

The master is pinned: the link talks only to the control server whose certificate has the
master's node id (from the join reply), or, for an agent that joined before joins returned it,
to the first one whose certificate is named MASTER_NODE_NAME, whose node id it pins from then
on (agent/enrollment.py). Either way the certificate must be named MASTER_NODE_NAME, which no
node may join under: a join answer altered on the way cannot pin another node of the fleet.
Any other fleet certificate is refused before anything is sent.

Error handling: any failure drops the link and it reconnects with backoff; the agent keeps
running on its last assignment meanwhile (unless the master refused it, below), and commit reports wait in a bounded queue, kept on
disk (agent/report_queue.py, agent/outbox.py: a kill of the agent loses none; past the
memory bound they wait on disk only, read back in order as the master takes them; a read back
that failed while none is held is tried again every READ_BACK_RETRY_S). A master
that announces CAP_REPORT_ACK says which reports it has taken durably (`ReportsTaken`); the
others stay queued and go again, first and in order, on the next session, so a kill of the
master loses none (master/report_acks.py). With an older master, reports are sent and forgotten.
A master that refuses this node (revoked or removed from the fleet) is logged as an error and asked
again only every REFUSED_RETRY_S: the node must join again with a new token; meanwhile the agent
stops acting on its last assignment (`on_refused`, agent/_stand_down.py). So is one that refuses this
node's certificate as expired when our clock agrees; one refused while our clock holds it
current or not yet valid is a clock behind, asked again every CERT_CLOCK_RETRY_S.
Reports are cut and merged to fit a frame by agent/_report_runs.py.
Resource handling: one connection at a time; a reader and a writer task per connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence

import anyio
import msgspec

from relaysync._util.aio import is_link_error, leaf_error
from relaysync.auth.validity import seconds_left
from relaysync.constants import (
    CAP_HOLD_END,
    CAP_REPORT_ACK,
    CAPABILITIES,
    CERT_CLOCK_RETRY_S,
    CLOSE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MASTER_NODE_NAME,
    PING_INTERVAL_S,
    READ_BACK_RETRY_S,
    RECEIVE_TIMEOUT_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    REFUSED_RETRY_S,
)
from relaysync.errors import (
    AuthError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateRefused,
    ForeignCertificate,
    PeerRefused,
    ProtocolError,
    UnknownPeer,
    error_text,
)
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import client_hello
from relaysync.protocol.messages import (
    Assignment,
    AssignmentAck,
    CommitReport,
    Error,
    ErrorCode,
    MetricsReport,
    Ping,
    Pong,
    Register,
    ReleaseReport,
    ReportsTaken,
)
from relaysync.transfer import tls

from ._report_runs import MAX_REPORT_BYTES as MAX_REPORT_BYTES
from ._report_runs import _merge, _runs, make_report
from .advertise import route_address
from .notices import Notice, Notices
from .outbox import ReportOutbox, sync_and_close
from .report_queue import ReportQueue

logger = logging.getLogger(__name__)


class MasterLink:
    """Keeps the control connection to the master."""

    def __init__(
        self,
        *,
        control_address: str,
        ctx: ssl.SSLContext,
        master_node_id: str | None,
        node_id: str,
        name: str,
        register: Register,
        on_assignment: Callable[[Assignment], Awaitable[None]],
        on_master_pinned: Callable[[str], None] | None = None,
        on_refused: Callable[[], Awaitable[None]] | None = None,
        identity_dir: str = "the agent's identity directory",
        advertise_route_port: int | None = None,
        advertise_route_ipv4_only: bool = False,
        capabilities: tuple[str, ...] = CAPABILITIES,
        outbox: ReportOutbox | None = None,
        replayed: Sequence[CommitReport] = (),
        certificate: bytes = b"",
        outbox_max_bytes: int | None = None,
    ) -> None:
        """
        Args:
            master_node_id: the fingerprint of the master's control certificate; None for an
                agent that joined before joins told it: the first control server named
                MASTER_NODE_NAME is taken, and `on_master_pinned(node_id)` saves its id.
            identity_dir: named in the error that tells how to join again.
            advertise_route_port: the peer server's port when the agent advertises its address
                on the route to the master (it listens on every interface, no advertise_host):
                each session registers the address its own connection goes out from, so an
                address changed by DHCP or a failover reaches the master at the next reconnect.
            advertise_route_ipv4_only: the peer server takes IPv4 only (0.0.0.0): a session
                that goes out over IPv6 keeps the address registered before.
            capabilities: announced in our Hello (fewer: act as an older release).
            outbox: keeps commit reports on disk until the master took them; None: in memory.
            replayed: the reports `outbox.open()` read back, sent before any new one (and
                before those it left unread on disk).
            certificate: this agent's (PEM), to tell a refusal of it that only a new one
                mends (expired by our clock too) from a clock behind, which NTP mends.
            outbox_max_bytes: what the outbox may weigh on disk (report_queue.MAX_OUTBOX_BYTES).
        """
        self.control_address = control_address
        self.ctx = ctx
        self.master_node_id = master_node_id
        self.on_master_pinned = on_master_pinned
        self.on_refused = on_refused
        self.identity_dir = identity_dir
        self.node_id = node_id
        self.name = name
        self.register = register
        self.advertise_route_port = advertise_route_port
        self.advertise_route_ipv4_only = advertise_route_ipv4_only
        self.on_assignment = on_assignment
        self.connected = False
        self.capabilities = capabilities
        self.certificate = certificate
        # kept until the master takes them, if it says so (`_acking`)
        self.reports = ReportQueue(outbox, replayed, max_disk_bytes=outbox_max_bytes)
        self._acking = False
        self._wake = anyio.Event()
        if self.reports.unsent:
            self._wake.set()
        self._loop: asyncio.AbstractEventLoop | None = None  # serve's: other threads wake it
        self._sync_lock = threading.Lock()  # one `sync_reports` at a time
        self._releases: dict[int, ReleaseReport] = {}
        self.notices = Notices()
        self._releases_unsent = False
        self._metrics: MetricsReport | None = None  # only the newest waits; older ones are stale

    def send_metrics(self, report: MetricsReport) -> None:
        """Queue the newest figures for the master; dropped if the link is down (they go stale).

        An early report that replaces a regular one still waiting goes as regular: it takes that
        report's slot, and the master measures the silence it allows between regular reports
        (marked early, that cycle had none: the gap measured, and the no-data limit, doubled)."""
        if self.connected:
            waiting = self._metrics
            if report.early and waiting is not None and not waiting.early:
                report = msgspec.structs.replace(report, early=False)
            self._metrics = report
            self._wake.set()

    def notify(self, message: Notice) -> None:
        """Queue a one-off notice for the master (sent when the link is up)."""
        self.notices.add(message)
        self._wake.set()

    def report_release(self, report: ReleaseReport) -> None:
        """Tell the master which journal seq a manual/reserved release covers (resent after reconnects)."""
        self._releases[report.mapping_id] = report
        self._releases_unsent = True
        self._wake.set()

    def release_told(self, mapping_id: int) -> ReleaseReport | None:
        """The last release report of `mapping_id` (sent again after reconnects), if any."""
        return self._releases.get(mapping_id)

    @property
    def dropped_reports(self) -> int:
        """Reports dropped past MAX_QUEUED_REPORTS, or past the memory bound when the outbox
        could not keep them (logged)."""
        return self.reports.dropped

    def sync_reports(self) -> None:
        """Make the reports queued so far outlive a power loss (a `safe` target's, before it
        saves the watermark they cover); in a worker thread: it waits on the disk. One caller
        at a time: the outbox hands a segment that appends have left to the first caller only,
        and another caller whose report is in it must not go on (and acknowledge) before that
        one's sync is done. The queue stays free meanwhile: the sync is outside its lock.

        Raises:
            OSError: a sync failed (the disk).
        """
        with self._sync_lock:
            with self.reports.lock:
                outbox = self.reports.outbox
                if outbox is None:
                    return
                sync = outbox.sync_handles()
            sync_and_close(sync)
            with self.reports.lock:
                outbox.dir_synced(sync.made)

    def report(self, report: CommitReport) -> None:
        """Queue a commit report, split so that no frame nears MAX_MESSAGE_BYTES, on disk before
        this returns. Call from any thread: a target's apply thread does, at each checkpoint,
        without waiting for the loop (agent/report_queue.py)."""
        parts = [
            make_report(
                report.mapping_id,
                report.source_node,
                report.target_node,
                report.watermark,
                records,
                report.route,
                report.journal_id,
            )
            for records in _runs(report.records)
        ]
        with self.reports.lock:  # a report's parts go in a row
            for part in parts:
                self.reports.add(part)
        self._wake_writer()

    def _wake_writer(self) -> None:
        """Have the write loop look at the queue: at once on the loop, soon from another thread
        (the event is the loop's). Before `serve` knows its loop, its session's start does."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # another thread
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._set_wake)
            return
        self._wake.set()

    def _set_wake(self) -> None:
        self._wake.set()  # the one current when it runs: the write loop makes new ones

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._loop = asyncio.get_running_loop()
        if self.reports.unsent:
            self._wake.set()  # reported from another thread before the loop was known
        task_status.started()
        delay = RECONNECT_MIN_S
        while True:
            refused_wait_s: float | None = None
            try:
                await self._session()
            except Exception as exc:
                if not is_link_error(exc):
                    raise
                err = leaf_error(exc)
                refused_wait_s = self._log_failure(err, delay)
                if _not_a_member(err) and self.on_refused is not None:
                    await self.on_refused()
            if self.connected:
                delay = RECONNECT_MIN_S
            self.connected = False
            await anyio.sleep(delay if refused_wait_s is None else refused_wait_s)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _log_failure(self, err: BaseException, delay: float) -> float | None:
        """Log why the session ended; returns the wait before asking again if the master
        refused this node (seldom), None for the ordinary backoff."""
        if _not_a_member(err):
            logger.error(
                "the master refused this agent: %s. To join the fleet again, stop it, "
                "delete %s and start it with --token <a new join token>; asking "
                "again in %.0f s",
                str(err.args[0]).rstrip("."),  # the master's sentence ends with one
                self.identity_dir,
                REFUSED_RETRY_S,
            )
            return REFUSED_RETRY_S
        if isinstance(err, CertificateRefused):  # the detail says why and when, what to do
            wait_s = self._certificate_retry_s()
            logger.error(
                "control link to master %s: %s; asking again in %.0f s",
                *(self.control_address, err, wait_s),
            )
            return wait_s
        if isinstance(err, UnknownPeer):
            logger.error(
                "control address %s answers with a certificate that is not the master's: "
                "%s; refused, will retry in %.1f s (if the master's control certificate "
                "was replaced, remove master_node_id from %s/master.json)",
                self.control_address,
                err,
                delay,
                self.identity_dir,
            )
        elif isinstance(err, CertificateExpired | CertificateNotYetValid | ForeignCertificate):
            logger.error(
                "control link to master %s refused, retry in %.1f s: %s",
                *(self.control_address, delay, err),
            )
        else:
            logger.warning(
                "control link to master %s down, will retry in %.1f s: %s",
                self.control_address,
                delay,
                error_text(err),
            )
        return None

    def _certificate_retry_s(self) -> float:
        """How soon to ask again once the master refused our certificate: seldom if our clock
        too says it expired (only a new one helps); soon if our clock holds it current or not
        yet valid: a clock is behind (ours or the master's), and NTP sets it right any moment."""
        if not self.certificate:
            return REFUSED_RETRY_S
        try:
            left_s = seconds_left(self.certificate)
        except AuthError:  # unreadable: as before, seldom
            return REFUSED_RETRY_S
        return REFUSED_RETRY_S if left_s <= 0 else CERT_CLOCK_RETRY_S

    async def _connect(self) -> FramedStream:
        """Connect to the master, and only to the master.

        Raises:
            UnknownPeer: the control address answers with another certificate of the fleet.
        """
        framed = await tls.connect(
            self.control_address, self.ctx, expected_node_id=self.master_node_id
        )
        node, name = tls.peer_node_id(framed), tls.peer_common_name(framed)
        # even when pinned: the pin came from the join's answer, and only the master's
        # certificate has this name (no node may join under it)
        if name != MASTER_NODE_NAME:
            framed.abort()
            raise UnknownPeer(f"{node[:16]} (named {name!r}, not the master)")
        if self.master_node_id is not None:
            return framed
        self.master_node_id = node
        logger.warning(
            "pinned the master's node id %s (master.json had none: joined with an older "
            "release); the control link connects to no other from now on",
            node[:16],
        )
        if self.on_master_pinned is not None:
            try:
                self.on_master_pinned(node)
            except OSError as exc:  # pinned for this run only: the next start pins by name again
                logger.warning("could not save the master's node id: %s", exc)
        return framed

    async def _session(self) -> None:
        framed = await self._connect()
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                hello = await client_hello(
                    framed, node_id=self.node_id, name=self.name, capabilities=self.capabilities
                )
                self._advertise_route(framed)
                await framed.send(self.register)
            ours, theirs = set(self.capabilities), set(hello.capabilities)
            self._acking = CAP_REPORT_ACK in ours & theirs
            self.notices.session_began(hold_end=CAP_HOLD_END in ours & theirs)
            if self.notices.first() is not None:
                self._wake.set()  # the holds in force, told again
            self.connected = True
            self._releases_unsent = bool(self._releases)
            logger.info("control link to master %s up", self.control_address)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_loop, framed)
                await self._write_loop(framed)
        finally:
            # Not taken: sent again, first and in order, on the next session.
            self.reports.session_over()
            self._acking = False
            if self.reports.unsent:
                self._wake.set()  # the next session's write loop sends them at once
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()

    def _advertise_route(self, framed: FramedStream) -> None:
        """Register the address this session's connection goes out from, if peers are told that
        one (see `advertise_route_port`) and it changed."""
        if self.advertise_route_port is None:
            return
        address = route_address(
            framed.extra("sockname"),
            self.advertise_route_port,
            ipv4_only=self.advertise_route_ipv4_only,
        )
        if not address or address == self.register.peer_address:
            return
        logger.warning(
            "this agent's address on the route to the master is now %s (was %s); "
            "advertising it to peers (advertise_host fixes one)",
            address,
            self.register.peer_address,
        )
        self.register = msgspec.structs.replace(self.register, peer_address=address)

    async def _read_loop(self, framed: FramedStream) -> None:
        while True:
            with anyio.fail_after(RECEIVE_TIMEOUT_S):
                message = await framed.receive()
            match message:
                case Assignment():
                    await self.on_assignment(message)
                    await framed.send(AssignmentAck(epoch=message.epoch))
                case Ping():
                    await framed.send(Pong(nonce=message.nonce))
                case Pong():
                    pass
                case ReportsTaken() if self._acking:
                    self.reports.taken(message.upto)
                    # read back from disk: the writer may be idle; or that failed: the writer
                    # tries again after READ_BACK_RETRY_S, not PING_INTERVAL_S
                    if self.reports.unsent or self.reports.stalled:
                        self._wake.set()
                case Error():
                    raise PeerRefused(message.detail, message.code.name)
                case _:
                    raise ProtocolError(f"unexpected {type(message).__name__} from master")

    async def _write_loop(self, framed: FramedStream) -> None:
        while True:
            # a failed read back of reports on disk, none held: no ack comes to try it again
            stalled = self.reports.stalled
            with anyio.move_on_after(READ_BACK_RETRY_S if stalled else PING_INTERVAL_S) as idle:
                await self._wake.wait()
            if stalled and idle.cancelled_caught and self.reports.stalled:
                self.reports.read_back()
            while (notice := self.notices.first()) is not None:
                await framed.send(notice)
                self.notices.sent()
            if self._releases_unsent:
                self._releases_unsent = False
                await framed.send_many(list(self._releases.values()))
            if idle.cancelled_caught and not self.reports.unsent and self._metrics is None:
                await framed.send(Ping())
                continue
            self._wake = anyio.Event()
            if self._metrics is not None:
                metrics, self._metrics = self._metrics, None
                await framed.send(metrics)
            # No waiting here: a lone report goes at once (the purge step waits on it), and while a
            # send is in flight the reports of a burst gather in the queue for the next one.
            # Reports on disk are read back a step at a time between sends (not all at once on
            # the ack that made room: that blocked the loop for 100s of ms).
            while self.reports.unsent or self.reports.read_back():
                await self._send_reports(framed)

    async def _send_reports(self, framed: FramedStream) -> None:
        # Kept until taken: whatever of them the master missed goes again (session_over), and,
        # held at the queue's head while they go, a drop past the bound forgets the oldest.
        merged = self.reports.hold_next(64, _merge)
        await framed.send_many([item.report for item in merged])
        if not self._acking:
            self.reports.sent_to_unacknowledging()


def _not_a_member(err: BaseException) -> bool:
    """Whether the master refused this node as none of the fleet's (revoked, removed, unknown)."""
    return isinstance(err, PeerRefused) and err.args[1:] == (ErrorCode.UNKNOWN_PEER.name,)
