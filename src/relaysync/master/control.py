"""The master's control server: agents' links over mutual TLS; assignments out, reports in.

A link is its certificate: the node id is the certificate's fingerprint, and the node must have
joined (a row in the store) and not have been removed (revoked); its name is the one it joined
with, whatever its Register says. What a link reports is believed only for the node itself: a
CommitReport for its own target folders (target_node is the link's node, a target of the
mapping, and the mapping's source is the report's source; acknowledged once the job log took
it, master/report_acks.py); ReleaseReport and MassDeleteHeld from the mapping's source
(MassDeleteEnded also from the node that reported the hold, master/_control_holds.py), and
the failures of sources that cannot run (master/_control_sources.py);
HopFailed from a source or target of the mapping about one of its targets. Anything else is
dropped, counted in `refused` and logged (a report naming another target is also an `alarm`
event: no agent sends one).

Error handling: a link that fails its handshake or sends a bad frame is closed; the agent
reconnects. A node that is unknown or removed is told so (`Error(UNKNOWN_PEER)`) and closed.
A server whose link drops is marked down at once, and up again on reconnect; the router
(master/router.py) re-plans around it, and around the hops agents report failed. A server
removed by an operator (a `server_removed` event) has its link closed at once. The journal
heads' writer survives any error of one pass (logged; the next figures bring the heads again).
Resource handling: one task per agent link; pushes to an agent go through its own lock. The
journal heads sources send with their figures wait in a slot per link (the newest replace the
older) for one task that writes them all in one transaction, so no link's reading waits on the
store's write lock for them (nor on a report naming thousands of made-up mappings). A
graceful stop (`stop`) ends that writer (a write stuck on the store is left behind), ends the
reading, has the job log take what was read, tells each agent how far its reports are taken,
then lets the links end, within MASTER_STOP_TIMEOUT_S.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
from anyio.abc import TaskStatus

from relaysync._util.addresses import address_problem
from relaysync._util.aio import is_link_error, leaf_error
from relaysync.auth.ca import is_master_name
from relaysync.constants import (
    CAP_REPORT_ACK,
    CAPABILITIES,
    CLOSE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MASTER_STOP_TIMEOUT_S,
    MASTER_UNAUTHENTICATED_PER_ADDRESS,
    RECEIVE_TIMEOUT_S,
)
from relaysync.errors import NodeRemoved, NotFound, ProtocolError, RelaySyncError, error_text
from relaysync.master.events import EventBus, EventType
from relaysync.master.joblog import JobLogWriter
from relaysync.master.mapping_members import MappingMembers
from relaysync.master.report_acks import ReportAcks
from relaysync.master.router import Router
from relaysync.master.source_failures import SourceFailures
from relaysync.master.store.store import Store
from relaysync.protocol.connection import ACCEPT_BACKLOG
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import server_hello
from relaysync.protocol.messages import (
    Assignment,
    AssignmentAck,
    CommitReport,
    Error,
    ErrorCode,
    HopFailed,
    MassDeleteEnded,
    MassDeleteHeld,
    MetricsReport,
    Ping,
    Pong,
    Register,
    ReleaseReport,
)
from relaysync.transfer import tls

from ._control_sources import ControlSources
from ._control_trust import AgentLink, HeadsFailures, warn_if_expiring

logger = logging.getLogger(__name__)

REMOVED_WAIT_S = 60.0  # the removal watcher's long poll on the event bus
MAX_REFUSED_FIGURES_LOGGED = 100  # per link: a hostile agent cannot grow the log or the set
ASSIGNMENTS_AT_ONCE = 4  # agents' assignments computed at once after a change


class ControlServer(ControlSources):
    """Accepts agents' control links and keeps their assignments current."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ctx: ssl.SSLContext,
        store: Store,
        events: EventBus,
        joblog: JobLogWriter,
        on_metrics: Callable[[str, str, MetricsReport], None] | None = None,
        router: Router | None = None,
        capabilities: tuple[str, ...] = CAPABILITIES,
    ) -> None:
        self.host, self.port = host, port
        self.capabilities = capabilities  # announced in our Hello (fewer: act as an older release)
        self.ctx = ctx
        self.store = store
        self.events = events
        self.joblog = joblog
        self.on_metrics = on_metrics  # (node_id, name, report), on the event loop's thread
        self.router = router  # fills in routes, drops failed targets; None: stars from the source
        self.links: dict[str, AgentLink] = {}
        self.refused: collections.Counter[str] = collections.Counter()  # dropped messages, by kind
        self._changed = anyio.Event()
        # Assignments computed at once (a store query each, in a worker thread): a change to
        # hundreds of agents must leave threads and store connections to the job log.
        self._assigning = anyio.CapacityLimiter(ASSIGNMENTS_AT_ONCE)
        self._members = MappingMembers(store)  # whom a mapping's reports may come from
        self._stopping = False  # a graceful stop began: no new link, no more reading
        self._writer_stopped = anyio.Event()  # the job log took every report read
        self._link_ended = anyio.Event()  # set (and replaced) as each link ends
        self._holds = {}  # the mass-delete holds reported (master/_control_holds.py)
        self.source_failures = SourceFailures()  # the sources that cannot run, and why
        self._heads_slots: dict[str, tuple[AgentLink, dict[int, tuple[int, str]]]] = {}  # by node
        self._heads_due = anyio.Event()  # a slot was filled: `_write_heads` writes them
        self._heads_writer: anyio.CancelScope | None = None  # `_write_heads`', cancelled by `stop`
        self._heads_errors: set[str] = set()
        self._heads_failures = HeadsFailures()

    def notify_change(self) -> None:
        """Mappings or servers changed: push fresh assignments (callable from any thread).

        The members cached for `_believed` go too (MappingMembers.forget), and so do the
        journal heads each link was last written with (a source moved: its old head deleted)."""
        self._members.forget()
        try:
            anyio.from_thread.run_sync(self._config_changed)
        except RuntimeError:
            self._config_changed()

    def _config_changed(self) -> None:
        self._forget_heads()
        self._changed.set()

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._push_loop)
            tg.start_soon(self._removal_loop)
            tg.start_soon(self._write_heads)
            port = await tg.start(
                partial(
                    tls.serve_tls,
                    self.host,
                    self.port,
                    self.ctx,
                    self._handle,
                    max_unauthenticated=ACCEPT_BACKLOG,  # a whole fleet reconnecting
                    # agents behind one NAT address reconnect at once too
                    max_unauthenticated_per_address=MASTER_UNAUTHENTICATED_PER_ADDRESS,
                    option="--control-listen",
                )
            )
            logger.info("control server listening on %s:%s", self.host, port)
            task_status.started(port)

    async def stop(self, stop_writer: Callable[[], Awaitable[None]]) -> None:
        """A graceful stop, before `serve` is cancelled: read no more messages (nor new links),
        have `stop_writer` take every report read (the job log's stop: into the store or the
        spool), tell each agent how far its reports are taken, and let the links end. Within
        MASTER_STOP_TIMEOUT_S: an agent that is gone or a store that hangs cannot hold a stop
        longer (the agents then send the reports not acknowledged again, counted as repeats).
        Before, the links closed with the last flush unacknowledged, so every stop had the
        agents send that flush's reports again: failure attempts, catch-up counters, purges
        and events counted twice."""
        self._stopping = True
        # The heads are the sources' word for the lag figures, reported anew after a restart:
        # a head write stuck on the store must not hold the stop (nor the job log's last flush).
        if self._heads_writer is not None:
            self._heads_writer.cancel()
        for link in list(self.links.values()):
            link.reading.cancel()
        with anyio.move_on_after(MASTER_STOP_TIMEOUT_S) as bounded:
            await stop_writer()
            self._writer_stopped.set()
            while self.links:
                self._link_ended = anyio.Event()
                await self._link_ended.wait()
        if bounded.cancelled_caught:
            logger.warning(
                "control links: stopped after %.0f s with %s links not done (their agents "
                "send the reports not acknowledged again)",
                MASTER_STOP_TIMEOUT_S,
                len(self.links),
            )

    async def _push_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            for link in list(self.links.values()):
                link.push_due.set()

    async def _pusher(self, link: AgentLink) -> None:
        """Send the link its newest assignment each time the config changed, on its own task: a
        new mapping starts when its source and targets all have it, and an agent's slow or
        stalled link (or its store query) delays no other agent's, this change or later ones.
        One push at a time per link, so its epochs go out in order; changes made meanwhile are
        one push."""
        while True:
            await link.push_due.wait()
            link.push_due = anyio.Event()
            await self._push_guarded(link)

    async def _push_guarded(self, link: AgentLink) -> None:
        try:
            await self._push(link)
        except (
            RelaySyncError,
            OSError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,
        ) as exc:  # the agent went away mid-push: it gets a fresh one on reconnect
            logger.warning("push to %s failed: %s", link.name, exc)
        except Exception:  # a bug must cost one push, not the master and every agent's link
            logger.exception("push to %s failed unexpectedly", link.name)

    async def _removal_loop(self) -> None:
        """Close the link of every server an operator removes or revokes, and forget the hold
        of a mapping deleted or confirmed (`_forget_hold`) and the source failures of a mapping
        deleted or a server removed, as the event bus tells it."""
        seen = self.events.last_id
        while True:
            events = await self.events.wait_since(seen, REMOVED_WAIT_S)
            for event in events:
                seen = event.id
                self._forget_hold(event)
                self._forget_source_failures(event)
                if event.type in (EventType.SERVER_REMOVED, EventType.SERVER_REVOKED):
                    await self.drop_link(str(event.data.get("node_id", "")))

    async def drop_link(self, node_id: str) -> bool:
        """Close a node's control link at once (it was removed from the fleet or revoked);
        False if it has none."""
        link = self.links.pop(node_id, None)
        if link is None:
            return False
        logger.warning(
            "closing the control link of %s: it was removed from the fleet or revoked", link.name
        )
        link.framed.abort()
        self._link_ended.set()
        if self.router is not None:
            await self._router_call(self.router.node_down, node_id)
        return True

    def _assignment(self, node_id: str) -> Assignment:
        if self.router is None:
            return self.store.assignment_for(node_id)
        # A re-plan bumps the config epoch, so the epoch check below still sees new routes.
        assignment = self.store.assignment_for(
            node_id, self.router.relay_mappings(node_id), route=self.router.routes_for
        )
        return self.router.apply(assignment, node_id)

    async def _router_call(self, method: Callable[..., None], *args: object) -> None:
        """Tell the router (in a worker thread: it reads the store); its failure never ends a link."""
        try:
            await anyio.to_thread.run_sync(method, *args)
        except RelaySyncError as exc:
            logger.warning("router update failed, the next tick retries: %s", exc)

    async def _push(self, link: AgentLink) -> None:
        if self._stopping:  # links end one by one: no re-plan goes out meanwhile
            return
        assignment = await anyio.to_thread.run_sync(
            self._assignment, link.node_id, limiter=self._assigning
        )
        if assignment.epoch == link.epoch_sent:
            return
        async with link.lock:
            if self._stopping:  # began while it waited for a slot or computed the assignment
                return
            await link.framed.send(assignment)
        link.epoch_sent = assignment.epoch

    async def _handle(self, framed: FramedStream) -> None:
        node_id = tls.peer_node_id(framed)
        link: AgentLink | None = None
        if self._stopping:  # it sends its reports to the next run
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()
            return
        try:
            register, acking = await self._handshake(framed, node_id)
            link = await self._admit(framed, node_id, register)
            link.acks = ReportAcks() if acking else None
            await self._register(link, register)
            await self._read_loop(link)
        except NodeRemoved as removed:
            self.refused["removed_node"] += 1
            logger.warning("refused the control link of node %s: %s", node_id[:16], removed)
        except Exception as group:
            if not is_link_error(group):
                logger.exception(
                    "control link of %s failed unexpectedly; closing it",
                    link.name if link else node_id[:16],
                )
                return
            exc = leaf_error(group)
            logger.warning(
                "control link of %s ended: %s",
                link.name if link else node_id[:16],
                error_text(exc),
            )
        finally:
            if link is not None and self.links.get(node_id) is link:
                del self.links[node_id]
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._mark_down, node_id)
                    if self.router is not None:
                        await self._router_call(self.router.node_down, node_id)
                self.events.publish(EventType.SERVER_DOWN, node_id=node_id, name=link.name)
            self._link_ended.set()
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()

    async def _handshake(self, framed: FramedStream, node_id: str) -> tuple[Register, bool]:
        with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
            hello = await server_hello(
                framed, node_id="", name="master", role="master", capabilities=self.capabilities
            )
            register = await framed.receive()
        if not isinstance(register, Register):
            raise ProtocolError("expected Register")
        return register, CAP_REPORT_ACK in set(hello.capabilities) & set(self.capabilities)

    def _mark_down(self, node_id: str) -> None:
        with contextlib.suppress(NotFound):  # removed meanwhile: nothing to mark
            self.store.set_server_state(node_id, "down", time.time())

    async def _admit(self, framed: FramedStream, node_id: str, register: Register) -> AgentLink:
        """Note a joined node's registration in the store; refuse one that is unknown or removed.

        Raises:
            NodeRemoved: the node did not join this master, was removed, or holds the master's
                name (joined before that name was reserved); it was told so.
        """
        try:
            if is_master_name(tls.peer_common_name(framed)):
                raise NodeRemoved(
                    node_id[:16],
                    "its certificate has the name reserved for the master: `relaysync server "
                    "remove <its name>` and join it again under another name",
                )
            address = register.peer_address
            if why := address_problem(address):
                # An older agent listening on 0.0.0.0, or a hostile one: its control link stays
                # (it may be a source), but no agent is sent where it cannot connect.
                logger.warning(
                    "node %s registers peer address %r, which no peer can connect to (%s): "
                    "links to it stay down until it registers a usable one (advertise_host)",
                    node_id[:16],
                    address[:80],
                    why,
                )
                address = ""
            info = await anyio.to_thread.run_sync(
                partial(
                    self.store.register_server,
                    node_id,
                    region=register.region,
                    group=register.group,
                    address=address,
                    cert_not_after=tls.peer_not_after(framed),
                )
            )
        except NodeRemoved as exc:
            with anyio.move_on_after(CLOSE_TIMEOUT_S):
                await framed.send(Error(code=ErrorCode.UNKNOWN_PEER, detail=str(exc)))
            raise
        if register.name != info.name:
            logger.warning(
                "node %s registers as %r but joined as %r: it keeps the name it joined with "
                "(to rename a server, delete it and join it again)",
                node_id[:16],
                register.name,
                info.name,
            )
        warn_if_expiring(info)
        return AgentLink(node_id=node_id, name=info.name, framed=framed)

    async def _register(self, link: AgentLink, register: Register) -> None:
        old = self.links.get(link.node_id)
        self.links[link.node_id] = link
        if old is not None:
            old.framed.abort()
        self.events.publish(
            EventType.SERVER_UP, node_id=link.node_id, name=link.name, address=register.peer_address
        )
        if self.router is not None:
            await self._router_call(self.router.node_up, link.node_id)
        await self._push(link)
        self._changed.set()  # its address may have changed: others get fresh peers

    async def _read_loop(self, link: AgentLink) -> None:
        """Read the link's messages until it fails or a graceful stop (`stop`) ends the reading;
        then it ends once the agent was told how far its reports are taken."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pusher, link)
            if link.acks is not None:
                tg.start_soon(link.acks.serve, link.framed, link.lock)
            if self._stopping:  # the stop began while this link was admitted
                link.reading.cancel()
            with link.reading:
                await self._read_messages(link)
            await self._writer_stopped.wait()
            if link.acks is not None:
                await link.acks.told()
            tg.cancel_scope.cancel()  # its acknowledgements are sent: serve waits idle

    async def _read_messages(self, link: AgentLink) -> None:
        last_seen = time.time()
        while True:
            with anyio.fail_after(RECEIVE_TIMEOUT_S):
                message = await link.framed.receive()
            now = time.time()
            if isinstance(message, CommitReport):
                await self._take_report(link, message)
            elif await self._believed(link, message):
                await self._handle_message(link, message)
            if now - last_seen > 5.0:
                last_seen = now
                await anyio.to_thread.run_sync(self.store.set_server_state, link.node_id, "up", now)

    async def _take_report(self, link: AgentLink, report: CommitReport) -> None:
        """Queue a report the link is believed for, acknowledged once the job log takes it."""
        taken = link.acks.receive() if link.acks is not None else None
        if await self._believed(link, report):
            self.joblog.add(self._parts_believed(link, report), taken=taken)
        elif taken is not None:
            taken()  # dropped: it would be dropped again

    async def _handle_message(self, link: AgentLink, message: object) -> None:
        """Act on one message the link is believed for."""
        match message:
            case MetricsReport():
                report, refused = message.usable()
                for why in sorted(set(refused) - link.refused_figures):
                    if len(link.refused_figures) >= MAX_REFUSED_FIGURES_LOGGED:
                        break
                    link.refused_figures.add(why)
                    logger.warning(
                        "agent %s: figure left out of /metrics and alerts (%s); "
                        "its agent is likely newer than this master, or broken",
                        link.name,
                        why,
                    )
                if self.on_metrics is not None:
                    self.on_metrics(link.node_id, link.name, report)
                self._take_heads(link, report.journal_heads)
                await self._take_source_failures(link, report.source_failures)
            case AssignmentAck():
                link.epoch_acked = message.epoch
            case MassDeleteHeld():
                self._take_held(link, message)
            case MassDeleteEnded():
                await self._take_hold_end(link, message)
            case ReleaseReport():
                await self._take_release(link, message)
            case HopFailed():
                if self.router is not None:
                    await self._router_call(
                        partial(
                            self.router.hop_failed,
                            message.mapping_id,
                            link.node_id,
                            message.child,
                            attempts=message.attempts,
                            error=message.error,
                            address=message.address,
                        )
                    )
            case Ping():
                async with link.lock:
                    await link.framed.send(Pong(nonce=message.nonce))
            case Pong():
                pass
            case _:
                raise ProtocolError(f"unexpected {type(message).__name__} on the control link")
