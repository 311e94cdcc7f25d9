"""An agent's commit reports outlive the master's sessions: the real MasterLink keeps each report
until the master says it took it (ReportsTaken), sends the others again, first and in order, on
its next session, and stays bounded. Against a master that does not announce report_ack, it
sends and forgets, as before. The master here is a control server by hand, on loopback TLS."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from tests._fleet import Fleet

from relaysync.agent import master_link, report_queue
from relaysync.agent import outbox as outbox_module
from relaysync.agent.master_link import MasterLink
from relaysync.agent.outbox import ReportOutbox
from relaysync.constants import CAP_REPORT_ACK, CAPABILITIES
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import server_hello
from relaysync.protocol.messages import (
    LOST_OP,
    Assignment,
    CommitRecord,
    CommitReport,
    Ping,
    Pong,
    Register,
    ReportsTaken,
)
from relaysync.transfer import tls

TIMEOUT_S = 10
SRC, TARGET = "a" * 64, "b" * 64


def _report(n: int) -> CommitReport:
    """Report n, of a mapping of its own (consecutive reports of one mapping would be merged)."""
    record = CommitRecord(seq=n, op="write", path=f"f{n}")
    return CommitReport(
        mapping_id=n, source_node=SRC, target_node=TARGET, watermark=n, records=(record,)
    )


@dataclass
class _Session:
    """One control session as the master sees it."""

    framed: FramedStream
    messages: MemoryObjectReceiveStream[object]

    async def reports(self, count: int) -> list[int]:
        """The next `count` reports' numbers (mapping ids), skipping pings and metrics."""
        got: list[int] = []
        with anyio.fail_after(TIMEOUT_S):
            while len(got) < count:
                message = await self.messages.receive()
                if isinstance(message, CommitReport):
                    got.append(message.mapping_id)
        return got

    async def take(self, upto: int) -> None:
        """Say the first `upto` reports are taken, and wait until the agent has read it."""
        await self.framed.send(ReportsTaken(upto=upto))
        await self.framed.send(Ping(nonce=upto))
        with anyio.fail_after(TIMEOUT_S):
            while not isinstance(await self.messages.receive(), Pong):
                pass


class _Master:
    """A control server that hands each session to the test."""

    def __init__(self, capabilities: tuple[str, ...]) -> None:
        self.capabilities = capabilities
        self._send: MemoryObjectSendStream[_Session]
        self._send, self._sessions = anyio.create_memory_object_stream[_Session](4)

    async def handle(self, framed: FramedStream) -> None:
        await server_hello(
            framed, node_id="", name="master", role="master", capabilities=self.capabilities
        )
        assert isinstance(await framed.receive(), Register)
        await framed.send(Assignment(epoch=1, mappings=(), peers=()))
        send, receive = anyio.create_memory_object_stream[object](1000)
        await self._send.send(_Session(framed, receive))
        try:
            while True:
                await send.send(await framed.receive())
        except Exception:  # noqa: BLE001 - the test closed the session, or the agent went
            return

    async def session(self) -> _Session:
        with anyio.fail_after(TIMEOUT_S):
            return await self._sessions.receive()


@asynccontextmanager
async def _running(
    fleet: Fleet,
    capabilities: tuple[str, ...],
    ident: tls.Identity | None = None,
    outbox_dir: Path | None = None,
) -> AsyncIterator[tuple[MasterLink, _Master]]:
    """A link to a master by hand; with `outbox_dir`, its reports are kept there (its own
    ReportOutbox each time: a new agent process on the same data directory)."""
    ident = ident or fleet.join("web-1")
    outbox = None if outbox_dir is None else ReportOutbox(outbox_dir, ident.node_id)
    master = _Master(capabilities)

    async def on_assignment(_: Assignment) -> None:
        pass

    async with anyio.create_task_group() as tg:
        port = await tg.start(
            tls.serve_tls, "127.0.0.1", 0, tls.server_context(fleet.master), master.handle
        )
        link = MasterLink(
            control_address=f"127.0.0.1:{port}",
            ctx=tls.client_context(ident),
            master_node_id=fleet.master.node_id,
            node_id=ident.node_id,
            name="web-1",
            register=Register(name="web-1", region="", group="", peer_address="127.0.0.1:9"),
            on_assignment=on_assignment,
            outbox=outbox,
            replayed=outbox.open(report_queue.MAX_QUEUED_REPORT_BYTES) if outbox else (),
        )
        await tg.start(link.serve)
        try:
            yield link, master
        finally:
            tg.cancel_scope.cancel()


def test_reports_not_taken_go_again_first_and_in_order_and_taken_ones_never(fleet: Fleet) -> None:
    async def main() -> None:
        async with _running(fleet, CAPABILITIES) as (link, master):
            first = await master.session()
            for n in range(1, 6):
                link.report(_report(n))
            assert await first.reports(5) == [1, 2, 3, 4, 5]
            await first.take(2)
            assert len(link.reports.unacked) == 3  # 3, 4 and 5: sent, not taken
            first.framed.abort()  # the master is killed: 3, 4 and 5 were in its memory
            link.report(_report(6))  # while the link is down
            second = await master.session()
            assert await second.reports(4) == [3, 4, 5, 6]  # numbered 1..4 in this session
            await second.take(4)
            assert not link.reports.unacked and not link.reports.unsent
            link.report(_report(7))
            assert await second.reports(1) == [7]
            await second.take(5)
            assert not link.reports.unacked

    anyio.run(main)


def test_a_master_without_report_acks_gets_each_report_once(fleet: Fleet) -> None:
    async def main() -> None:
        older = tuple(c for c in CAPABILITIES if c != CAP_REPORT_ACK)
        async with _running(fleet, older) as (link, master):
            first = await master.session()
            for n in range(1, 4):
                link.report(_report(n))
            assert await first.reports(3) == [1, 2, 3]
            assert not link.reports.unacked  # sent and forgotten, as before
            first.framed.abort()
            second = await master.session()
            link.report(_report(4))
            assert await second.reports(1) == [4]

    anyio.run(main)


def test_the_queue_stays_bounded_and_keeps_the_sessions_count(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past MAX_QUEUED_REPORTS the oldest report goes (with a warning), sent or not; the master's
    count of the session's reports still names the same reports. One dropped after it was sent
    gets a marker only if the master does not take it in that session."""
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 3)

    async def main() -> None:
        async with _running(fleet, CAPABILITIES) as (link, master):
            first = await master.session()
            for n in range(1, 4):
                link.report(_report(n))
            assert await first.reports(3) == [1, 2, 3]
            link.report(_report(4))  # 1 is dropped: the master holds 1, 2, 3 and gets 4
            assert await first.reports(1) == [4]
            assert link.dropped_reports == 1
            await first.take(1)  # report 1 of the session: so no marker for it
            queued = [*link.reports.unacked, *link.reports.unsent]
            assert [q.report.mapping_id for q in queued] == [2, 3, 4]
            link.report(_report(5))  # 2 is dropped, sent and never taken (the session ends)
            assert await first.reports(1) == [5]
            first.framed.abort()
            second = await master.session()
            assert await second.reports(3) == [3, 4, 5]
            await second.take(3)
            # then the marker of report 2 (agent/_lost_reports.py: noted when the session
            # ended without its take)
            assert await second.reports(1) == [2]
            assert [q.report.records[0].op for q in link.reports.unacked] == [LOST_OP]

    anyio.run(main)
    assert "dropped the oldest" in caplog.text


def test_reports_not_taken_outlive_a_kill_of_the_agent_and_go_first_in_order(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The agent is killed with reports sent and not taken (1, 2), and one not sent (3): the
    next process on the same data directory sends them first, in order, then new ones; taken
    ones never come back."""
    ident = fleet.join("web-1")

    async def main() -> None:
        async with _running(fleet, CAPABILITIES, ident, tmp_path / "outbox") as (link, master):
            first = await master.session()
            for n in range(1, 3):
                link.report(_report(n))
            assert await first.reports(2) == [1, 2]
            first.framed.abort()  # the session ends: 1 and 2 go back to the queue
            link.report(_report(3))
        # killed: nothing was closed or flushed (the task group just stops)
        async with _running(fleet, CAPABILITIES, ident, tmp_path / "outbox") as (link, master):
            second = await master.session()
            link.report(_report(4))
            assert await second.reports(4) == [1, 2, 3, 4]
            await second.take(3)
        async with _running(fleet, CAPABILITIES, ident, tmp_path / "outbox") as (link, master):
            third = await master.session()
            assert await third.reports(1) == [4]
            await third.take(1)
        async with _running(fleet, CAPABILITIES, ident, tmp_path / "outbox") as (link, master):
            await master.session()
            assert not link.reports.unsent and not link.reports.unacked

    anyio.run(main)


def _big(n: int) -> CommitReport:
    """Report n of 200 records of 500-character paths (~230 KB held in memory)."""
    records = tuple(
        CommitRecord(seq=i, op="write", path=f"{n}/{i}/".ljust(500, "x")) for i in range(200)
    )
    return CommitReport(
        mapping_id=n, source_node=SRC, target_node=TARGET, watermark=n, records=records
    )


async def _past_the_bound(link: MasterLink, master: _Master, count: int) -> tuple[_Session, int]:
    """Report `count` big reports to a first session: those held in memory go at once, the
    rest wait on disk. Returns the session and how many it got."""
    first = await master.session()
    for n in range(1, count + 1):
        link.report(_big(n))
    held = len(link.reports.unsent) + len(link.reports.unacked)
    assert 0 < held < count and link.reports.pending == count
    assert await first.reports(held) == list(range(1, held + 1))
    return first, held


def test_reports_past_the_memory_bound_go_from_disk_in_order_as_the_master_takes_them(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound in bytes, reports wait on disk only: the master gets those held, and the
    others once it took them (the link's writer is woken by the read back), in order, none lost;
    a killed agent's next process does the same from the outbox."""
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORT_BYTES", 1024 * 1024)
    ident = fleet.join("web-1")

    async def main() -> None:
        async with _running(fleet, CAPABILITIES, ident, tmp_path / "outbox") as (link, master):
            first, held = await _past_the_bound(link, master, 20)
            await first.take(held)
            assert await first.reports(3) == [held + 1, held + 2, held + 3]
        # killed with 20 - held reports not taken: the next process reads them back as they go
        async with _running(fleet, CAPABILITIES, ident, tmp_path / "outbox") as (link, master):
            second = await master.session()
            got: list[int] = []
            with anyio.fail_after(TIMEOUT_S):
                while len(got) < 20 - held:  # each taken as it comes (`take` skips reports)
                    message = await second.messages.receive()
                    if isinstance(message, CommitReport):
                        got.append(message.mapping_id)
                        await second.framed.send(ReportsTaken(upto=len(got)))
                while link.reports.pending:  # the last ReportsTaken is on its way
                    await anyio.sleep(0.01)
            assert got == list(range(held + 1, 21))
            assert link.reports.dropped == 0

    anyio.run(main)


def test_a_failed_read_back_is_tried_again_with_no_new_report(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master takes every report held and reading the next back from disk fails once
    (EMFILE): no ack and no new report comes to try it again, so the writer does, after
    READ_BACK_RETRY_S; the master gets the rest in order."""
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORT_BYTES", 1024 * 1024)
    monkeypatch.setattr(master_link, "READ_BACK_RETRY_S", 0.05)
    real = outbox_module.os.pread

    def emfile(*args: object) -> bytes:
        monkeypatch.setattr(outbox_module.os, "pread", real)
        raise OSError(errno.EMFILE, "Too many open files")

    async def main() -> None:
        async with _running(fleet, CAPABILITIES, None, tmp_path / "outbox") as (link, master):
            first, held = await _past_the_bound(link, master, 10)
            monkeypatch.setattr(outbox_module.os, "pread", emfile)
            await first.take(held)
            assert await first.reports(3) == [held + 1, held + 2, held + 3]

    anyio.run(main)


def test_the_writer_reads_reports_back_between_its_sends(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack reads back one step of the reports on disk (on the event loop); the writer reads
    the next steps between its sends, as long as they fit in memory, with no other ack."""
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORT_BYTES", 4 * 1024 * 1024)
    monkeypatch.setattr(report_queue, "READ_BACK_STEP_BYTES", 1)  # one report a step

    async def main() -> None:
        async with _running(fleet, CAPABILITIES, None, tmp_path / "outbox") as (link, master):
            first, held = await _past_the_bound(link, master, 30)
            assert 5 < held < 25
            await first.take(held)
            assert await first.reports(5) == list(range(held + 1, held + 6))

    anyio.run(main)
