"""The sending end of a mapping: one link per target, streaming the source's journal over TLS.

A `TargetLink` connects to its target's peer server, learns the target's watermark for this
source journal, catches it up (journal replay when the journal still covers the gap, otherwise,
or once it released the records meanwhile, a top-down manifest comparison; a held mapping's at a
release), then streams new journal records as they arrive, each batch closed by a Checkpoint
that the target acknowledges once the batch is committed. This module holds the session's
set-up, its loop and its failures; the streaming of records and batches is in
transfer/_record_stream.py, the comparison in transfer/_compare_catch_up.py.

Error handling: any link, TLS or protocol failure, or a change the target could not commit, ends
the session; the link reconnects with backoff and resumes from the target's watermark, so a
change is never lost and re-sending one is harmless.
Resource handling: one connection and one reader task per session, closed on exit.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from relaysync._util.aio import error_leaves, is_link_error, leaf_error
from relaysync._util.repeats import Repeats
from relaysync.constants import (
    CAP_SMALL_FILE,
    CAP_UNREADABLE,
    CLOSE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    LINK_DOWN_LOG_INTERVAL_S,
    LINK_DOWN_WARNINGS,
    PERIODIC_COMPARE_S,
    PING_INTERVAL_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
)
from relaysync.errors import (
    JournalGap,
    PeerRefused,
    ProtocolError,
    SendWhole,
    SpoolReset,
    error_text,
)
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import client_hello
from relaysync.protocol.messages import (
    AuthChallenge,
    AuthResponse,
    Error,
    ErrorCode,
    MappingState,
    OpenMapping,
    Ping,
)
from relaysync.transfer import ops, tls
from relaysync.transfer._compare_catch_up import CompareCatchUp
from relaysync.transfer._link_session import _Session
from relaysync.transfer._record_stream import RecordStream
from relaysync.transfer._stale_routes import StaleRoutes
from relaysync.transfer.link_ends import FailureFn, SourceFolder, TargetAddress
from relaysync.transfer.unreadable import UnreadableFiles

logger = logging.getLogger(__name__)


class TargetLink(RecordStream, CompareCatchUp):
    """Keeps one target of one mapping up to date, reconnecting as needed."""

    def __init__(
        self,
        source: SourceFolder,
        target: TargetAddress,
        ctx: ssl.SSLContext,
        *,
        node_id: str,
        name: str,
        compare_interval_s: float = PERIODIC_COMPARE_S,
        options: ops.SendOptions | None = None,
        route: tuple[str, ...] = (),
        on_failure: FailureFn | None = None,
        route_epoch: Callable[[], int] = lambda: 0,
        erase: bool = True,
    ) -> None:
        self.source = source
        # False for a member of an N:M job: the target also holds other sources' files, so a
        # comparison never erases names it does not know (deletes come from journal records).
        self.erase = erase
        self.options = options or ops.SendOptions()
        self.target = target
        self.ctx = ctx
        self.node_id = node_id
        self.name = name
        self.compare_interval_s = compare_interval_s
        self.connected = False
        self._bytes_closed = 0  # sent by sessions that have ended
        self._framed: FramedStream | None = None
        self.route = route or (name,)  # the nodes the stream comes through, this one last
        self.on_failure = on_failure
        self.route_epoch = route_epoch  # of the routing table this link belongs to
        # Consecutive failed sessions, reported to the master (it re-plans). A session that opens
        # and then fails (a target refusing the same change each time) counts too: only progress
        # (an ack that advances, or an idle session answering a ping) starts the count again.
        self.failures = 0
        self._down = Repeats(LINK_DOWN_LOG_INTERVAL_S)  # failed sessions since the last line
        self.log = logging.LoggerAdapter(
            logger, {"mapping": source.mapping_id, "target": target.name}
        )
        # Refusals in a row of a route change in flight (ROUTES_STALE), counted and logged apart.
        self.stale = StaleRoutes(self.log, target.name)
        # Files found there but unreadable, read again with backoff (transfer/unreadable.py).
        self.unreadable = UnreadableFiles(time.monotonic, self.log, self.options)
        # The target takes SourceUnreadable (its Hello said so): a relay keeps those paths.
        self.tells_unreadable = False

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled."""
        task_status.started()
        delay = RECONNECT_MIN_S
        while True:
            at_once = False
            try:
                await self._run_session()
            except Exception as exc:
                if not is_link_error(exc):
                    raise
                if any(isinstance(e, SendWhole) for e in error_leaves(exc)):
                    # A routine answer (the target lacks a version a change builds on), not a
                    # failed hop: the session after it sends that change whole, at once.
                    at_once = True
                    self.log.info(
                        "%s asks for a change whole, reconnecting: %s",
                        self.target.name,
                        leaf_error(exc),
                    )
                elif any(map(_not_a_failed_hop, error_leaves(exc))):
                    delay = self._routes_stale(exc)
                else:
                    delay = self._session_failed(exc, delay)
            if self.connected:
                self.stale.settled()  # the target took a session: any wait is over
            self.connected = False
            await anyio.sleep(0 if at_once else delay)
            if not at_once:
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _routes_stale(self, exc: BaseException) -> float:
        """A refusal of a route change in flight: retried soon and quietly at first; once such
        refusals have lasted past ROUTES_STALE_LIMIT_S (the newer table reaches both nodes in
        seconds: the target still has no table naming us, its assignment lost, the mapping
        refused there) a failed hop, reported to the master, which re-plans, and retried ever
        more seldom (transfer/_stale_routes.py). Returns the wait before the next session."""
        err = leaf_error(exc)
        delay = self.stale.refused(err, time.monotonic())
        if self.stale.failed:
            self.failures += 1
            if self.on_failure is not None:
                self.on_failure(
                    self.target.node_id, f"{type(err).__name__}: {err}"[:500], self.failures
                )
        return delay

    def _session_failed(self, exc: BaseException, delay: float) -> float:
        """Log and count a failed session, report it to the master; returns the wait before the
        next one. A refusal of a route change in flight (_not_a_failed_hop) is not counted: the
        master re-plans around a hop at its second failure."""
        err = leaf_error(exc)
        if self.failures == 0:  # the session had made progress: a fresh failure, a short wait
            delay = RECONNECT_MIN_S
            self._down.reset(time.monotonic())
        # never below a lost link's first wait, after a route change's quicker retries
        delay = max(delay, RECONNECT_MIN_S)
        self._log_down(err, delay)
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure(
                self.target.node_id, f"{type(err).__name__}: {err}"[:500], self.failures
            )
        return delay

    def _log_down(self, err: BaseException, delay: float) -> None:
        """The first LINK_DOWN_WARNINGS failures in a row each a warning; then (a target down
        for long) one line per LINK_DOWN_LOG_INTERVAL_S with their count, not one a retry."""
        now = time.monotonic()
        due = self._down.add(now)
        if self.failures < LINK_DOWN_WARNINGS:
            self.log.warning(
                "link to %s down, will retry in %.1f s: %s",
                *(self.target.name, delay, error_text(err)),
            )
        elif due:
            self.log.warning(
                "link to %s still down: %d failed sessions in a row, %d in the last %.0f s, "
                "retrying every %.0f s: %s",
                *(self.target.name, self.failures + 1, self._down.count),
                *(now - self._down.logged_at, delay, error_text(err)),
            )
        else:
            self.log.debug("link to %s down, will retry in %.1f s", self.target.name, delay)
            return
        self._down.reset(now)

    @property
    def bytes_sent(self) -> int:
        """Bytes this link has put on the wire, its current session included."""
        return self._bytes_closed + (self._framed.bytes_sent if self._framed is not None else 0)

    def current_route(self) -> tuple[str, ...]:
        """The nodes our stream comes through, this one last (recorded in the job log)."""
        return self.route

    async def _open(self) -> tuple[FramedStream, MappingState]:
        if self.options.tls:
            framed = await tls.connect(
                self.target.dial(), self.ctx, expected_node_id=self.target.node_id
            )
        else:
            framed = await tls.connect_plain(self.target.dial())
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                hello = await client_hello(framed, node_id=self.node_id, name=self.name)
                self.options.small_files = (
                    CAP_SMALL_FILE in hello.capabilities
                )  # an older release: no
                self.tells_unreadable = CAP_UNREADABLE in hello.capabilities
                await framed.send(
                    OpenMapping(
                        mapping_id=self.source.mapping_id,
                        journal_id=self.source.journal.journal_id,
                        route=self.current_route(),
                        route_epoch=self.route_epoch(),
                    )
                )
                state = await framed.receive()
                if isinstance(state, AuthChallenge) and not self.options.tls:
                    mac = tls.link_mac(
                        self.options.link_secret,
                        state.nonce,
                        self.source.mapping_id,
                        self.node_id,
                        self.target.node_id,
                    )
                    await framed.send(AuthResponse(mac=mac))
                    state = await framed.receive()
                if isinstance(state, Error):
                    raise PeerRefused(state.detail, state.code.name)
                if not isinstance(state, MappingState):
                    raise ProtocolError("expected MappingState")
        except BaseException:
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()
            raise
        return framed, state

    async def _run_session(self) -> None:
        framed, state = await self._open()
        self._framed = framed
        session = _Session(self, framed)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.read_loop)
                await self._stream(session, state, tg)
        finally:
            session.close()
            self._bytes_closed += framed.bytes_sent
            self._framed = None
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()

    async def _stream(self, session: _Session, state: MappingState, tg: TaskGroup) -> None:
        journal = self.source.journal
        session.acked = session.sent_upto = state.watermark
        self.source.on_open(
            self.target.node_id, state.watermark
        )  # lower too: it may have lost a tail
        self.options.resume = {(p.path, p.hash): p.size for p in state.partials}
        session.partials = state.partials
        self.connected = True
        # The journal cannot replay what the target lacks: a comparison is owed (`_may_compare`).
        owed = not journal.covers(state.watermark)
        self.source.on_owed(self.target.node_id, owed)
        await self._tell_unreadable(session)  # before any comparison a relay runs with them
        # Once replay has caught up, compare anyway: the target may have lost or gained files.
        compare_due = anyio.current_time() + (self.compare_interval_s if owed else 0.0)
        self.log.info("streaming to %s from seq %s", self.target.name, session.sent_upto)
        while True:
            await self._tell_unreadable(session)
            if self.unreadable.due(session.sent_upto):  # files it could not read, read again
                await self._send_stream(session, self.unreadable.retries(self.source, session))
            # Not while a first scan journals the folder (`scanning`): its manifest does not
            # hold the folder yet, and a comparison would erase what the target holds of it.
            if owed and not self.source.scanning and self._may_compare(session):
                await self._catch_up_by_compare(session)
                owed = False
                self.source.on_owed(self.target.node_id, False)
                continue
            try:
                records = [] if owed else await self._read_journal(session)
            except JournalGap as gap:  # released meanwhile (a reopen racing a release)
                self.log.warning(
                    "cannot replay to %s, catching up by comparison: %s", self.target.name, gap
                )
                owed = True
                self.source.on_owed(self.target.node_id, True)
                continue
            if records:
                await self._wait_window(session)
                await self._send_records(session, records)
                if session.moved.overflowed:  # too many files moved away to follow: compare instead
                    compare_due = anyio.current_time()
                continue
            if not self.source.realtime:  # nothing is sent between releases, not even by a compare
                compare_due = anyio.current_time() + self.compare_interval_s
            # Not while a first scan journals the folder: its records reach the target anyway,
            # and a comparison would hash a manifest still being built (0.1 CPU-s per 10,000).
            due = anyio.current_time() >= compare_due and not self.source.scanning
            if due and self.source.applied_seq > session.sent_upto:
                continue  # journaled since the read: sent first, a comparison never jumps them
            if due and session.acked >= session.sent_upto:
                await self._catch_up_by_compare(session)
                compare_due = anyio.current_time() + self.compare_interval_s
                continue
            if due:  # due, but the last batch is not acked yet
                with anyio.move_on_after(PING_INTERVAL_S):
                    await session.ack_changed.wait()
                continue
            wait_s = min(PING_INTERVAL_S, compare_due - anyio.current_time())
            if self.source.scanning:  # not due until it ended (`wait_for_records` returns then)
                wait_s = PING_INTERVAL_S
            retry_at = self.unreadable.next_due(session.sent_upto)
            if retry_at is not None:
                wait_s = min(wait_s, max(0.0, retry_at - time.monotonic()))
            before = self.source.send_limit
            # Owed a comparison, a held mapping waits for its next release; nothing to replay.
            after = max(session.sent_upto, before) if owed else session.sent_upto
            await self.source.wait_for_records(after, wait_s)
            if self.source.send_limit == before:
                await session.framed.send(Ping())

    async def _tell_unreadable(self, session: _Session) -> None:
        """Tell the target what changed of the source's unreadable paths, if it takes them: a
        shrink once it has been sent the records journaled before (relay_unreadable.py)."""
        if not self.tells_unreadable:
            return
        now = self.source.unreadable_now()
        # Our tree's records (a source's journal) or our parent's stream (a relay's spool) up to
        # here hold what made a path readable again before `now` was taken.
        at = max(self.source.applied_seq, self.source.send_limit)
        message = session.unreadable.to_tell(now, at, session.sent_upto)
        if message is not None:
            await session.framed.send(message)


def _not_a_failed_hop(err: BaseException | None) -> bool:
    """A re-plan in flight (the receiver runs another routing epoch) or our relay's own parent
    stream restarting: the link retries without telling the master."""
    if isinstance(err, SpoolReset):
        return True
    return isinstance(err, PeerRefused) and err.args[1:2] == (ErrorCode.ROUTES_STALE.name,)
