"""The agent's control link to the master: register, receive assignments, report commits.

Error handling: any failure drops the link and it reconnects with backoff; the agent keeps
running on its last assignment meanwhile, and commit reports wait in a bounded queue.
Resource handling: one connection at a time; a reader and a writer task per connection.
"""

from __future__ import annotations

import collections
import logging
import ssl
from collections.abc import Awaitable, Callable

import anyio

from relaysync._util.aio import is_link_error, leaf_error
from relaysync.constants import (
    CLOSE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    PING_INTERVAL_S,
    RECEIVE_TIMEOUT_S,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
)
from relaysync.errors import PeerRefused, ProtocolError
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import client_hello
from relaysync.protocol.messages import (
    MAX_REPORT_RECORDS,
    Assignment,
    AssignmentAck,
    CommitRecord,
    CommitReport,
    Error,
    HopFailed,
    MassDeleteHeld,
    MetricsReport,
    Ping,
    Pong,
    Register,
    ReleaseReport,
)
from relaysync.transfer import tls

logger = logging.getLogger(__name__)

MAX_QUEUED_REPORTS = 100_000  # oldest reports are dropped past this (watermarks come again)


class MasterLink:
    """Keeps the control connection to the master."""

    def __init__(self, *, control_address: str, ctx: ssl.SSLContext, node_id: str, name: str,
                 register: Register, on_assignment: Callable[[Assignment], Awaitable[None]]) -> None:
        self.control_address = control_address
        self.ctx = ctx
        self.node_id = node_id
        self.name = name
        self.register = register
        self.on_assignment = on_assignment
        self.connected = False
        self._reports: collections.deque[CommitReport] = collections.deque(maxlen=MAX_QUEUED_REPORTS)
        self._wake = anyio.Event()
        self._releases: dict[int, ReleaseReport] = {}
        self._notices: collections.deque[MassDeleteHeld | HopFailed] = collections.deque(maxlen=1000)
        self._releases_unsent = False
        self._metrics: MetricsReport | None = None  # only the newest waits; older ones are stale

    def send_metrics(self, report: MetricsReport) -> None:
        """Queue the newest figures for the master; dropped if the link is down (they go stale)."""
        if self.connected:
            self._metrics = report
            self._wake.set()

    def notify(self, message: MassDeleteHeld | HopFailed) -> None:
        """Queue a one-off notice for the master (sent when the link is up)."""
        self._notices.append(message)
        self._wake.set()

    def report_release(self, report: ReleaseReport) -> None:
        """Tell the master which journal seq a manual/reserved release covers (resent after reconnects)."""
        self._releases[report.mapping_id] = report
        self._releases_unsent = True
        self._wake.set()

    def report(self, report: CommitReport) -> None:
        """Queue a commit report, split so that no frame nears MAX_MESSAGE_BYTES (call on the loop)."""
        records = report.records
        for start in range(0, max(len(records), 1), MAX_REPORT_RECORDS):
            self._reports.append(make_report(report.mapping_id, report.source_node, report.target_node,
                                             report.watermark,
                                             records[start : start + MAX_REPORT_RECORDS], report.route))
        self._wake.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = RECONNECT_MIN_S
        while True:
            try:
                await self._session()
            except Exception as exc:
                if not is_link_error(exc):
                    raise
                err = leaf_error(exc)
                logger.warning("control link to master %s down, will retry in %.1f s: %s",
                               self.control_address, delay, err or type(err).__name__)
            if self.connected:
                delay = RECONNECT_MIN_S
            self.connected = False
            await anyio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _session(self) -> None:
        framed = await tls.connect(self.control_address, self.ctx)
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                await client_hello(framed, node_id=self.node_id, name=self.name)
                await framed.send(self.register)
            self.connected = True
            self._releases_unsent = bool(self._releases)
            logger.info("control link to master %s up", self.control_address)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_loop, framed)
                await self._write_loop(framed)
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()

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
                case Error():
                    raise PeerRefused(message.detail, message.code.name)
                case _:
                    raise ProtocolError(f"unexpected {type(message).__name__} from master")

    async def _write_loop(self, framed: FramedStream) -> None:
        while True:
            with anyio.move_on_after(PING_INTERVAL_S) as idle:
                await self._wake.wait()
            while self._notices:
                await framed.send(self._notices[0])
                self._notices.popleft()
            if self._releases_unsent:
                self._releases_unsent = False
                await framed.send_many(list(self._releases.values()))
            if idle.cancelled_caught and not self._reports and self._metrics is None:
                await framed.send(Ping())
                continue
            self._wake = anyio.Event()
            if self._metrics is not None:
                metrics, self._metrics = self._metrics, None
                await framed.send(metrics)
            # No waiting here: a lone report goes at once (the purge step waits on it), and while a
            # send is in flight the reports of a burst gather in the queue for the next one.
            while self._reports:
                batch = [self._reports.popleft() for _ in range(min(len(self._reports), 64))]
                try:
                    await framed.send_many(list(_merge(batch)))
                except BaseException:
                    self._reports.extendleft(reversed(batch))
                    raise


def _merge(reports: list[CommitReport]) -> list[CommitReport]:
    """Merge consecutive reports of the same (mapping, source, target) into fewer messages."""
    merged: list[CommitReport] = []
    for r in reports:
        last = merged[-1] if merged else None
        if (last is not None and (last.mapping_id, last.source_node, last.target_node)
                == (r.mapping_id, r.source_node, r.target_node)
                and len(last.records) + len(r.records) <= MAX_REPORT_RECORDS):
            merged[-1] = CommitReport(mapping_id=r.mapping_id, source_node=r.source_node,
                                      target_node=r.target_node,
                                      watermark=max(last.watermark, r.watermark),
                                      records=last.records + r.records)
        else:
            merged.append(r)
    return merged


def make_report(mapping_id: int, source: str, target: str, watermark: int,
                records: tuple[CommitRecord, ...], route: tuple[str, ...] = ()) -> CommitReport:
    return CommitReport(mapping_id=mapping_id, source_node=source, target_node=target,
                        watermark=watermark, records=records, route=route)
