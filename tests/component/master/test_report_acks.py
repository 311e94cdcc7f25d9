"""The master acknowledges an agent's commit reports (ReportsTaken) only once its job log has taken
them into the store or the spool, in the order they came, and only to an agent that announced
report_ack when it announces it too. The real ControlServer and JobLogWriter, over a store whose
job-log write fails as a database that is down does (the seam of test_joblog_spooling.py)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from sqlalchemy.exc import OperationalError
from tests._fleet import TIMEOUT_S, Fleet, roundtrip

from relaysync.constants import CAP_REPORT_ACK, CAPABILITIES
from relaysync.errors import StoreError
from relaysync.master import control as control_module
from relaysync.master import joblog
from relaysync.master.control import ControlServer
from relaysync.master.joblog import JobLogWriter
from relaysync.master.service import serve_links_and_joblog
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import client_hello
from relaysync.protocol.messages import CommitRecord, CommitReport, Register, ReportsTaken
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.purger import Purger
from relaysync.transfer import tls

OLDER = tuple(c for c in CAPABILITIES if c != CAP_REPORT_ACK)


class _Outage:
    """The store's job-log write failing while `down`."""

    def __init__(self, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = True
        self.refused = 0
        real = fleet.store.record_commit_reports

        def record(reports: list[CommitReport]) -> None:
            if self.down:
                self.refused += 1
                cause = OperationalError("INSERT ...", {}, Exception("connection refused"))
                raise StoreError(f"record commit reports: {cause}") from cause
            real(reports)

        monkeypatch.setattr(fleet.store, "record_commit_reports", record)


def _mapping(fleet: Fleet) -> int:
    body = {
        "name": "docs",
        "source": "src",
        "source_path": "/srv/docs",
        "targets": [{"server": "web-a", "path": "/srv/docs"}],
    }
    resp = fleet.client.post("/api/mappings", json=body)
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


def _report(m: int, source: str, target: str, seq: int) -> CommitReport:
    record = CommitRecord(seq=seq, op="write", path=f"f{seq}.html")
    return CommitReport(
        mapping_id=m, source_node=source, target_node=target, watermark=seq, records=(record,)
    )


@asynccontextmanager
async def _link(
    port: int, ident: tls.Identity, capabilities: tuple[str, ...]
) -> AsyncIterator[FramedStream]:
    framed = await tls.connect(f"127.0.0.1:{port}", tls.client_context(ident))
    try:
        with anyio.fail_after(TIMEOUT_S):
            await client_hello(
                framed, node_id=ident.node_id, name="web-a", capabilities=capabilities
            )
            await framed.send(
                Register(name="web-a", region="", group="", peer_address="127.0.0.1:9")
            )
        yield framed
    finally:
        framed.abort()


@asynccontextmanager
async def _master(
    fleet: Fleet, spool: Path, capabilities: tuple[str, ...] = CAPABILITIES, in_memory: int = 2
) -> AsyncIterator[tuple[int, JobLogWriter]]:
    """The real control server and a job-log writer holding `in_memory` records in memory, the
    rest spooled."""
    async with fleet.control_server() as (control, port):
        control.capabilities = capabilities
        control.joblog = writer = JobLogWriter(
            fleet.store, fleet.events, spool_dir=spool, max_queued_records=in_memory
        )
        async with anyio.create_task_group() as tg:
            await tg.start(writer.serve)
            yield port, writer
            tg.cancel_scope.cancel()


async def _until(done: object) -> None:
    with anyio.fail_after(TIMEOUT_S):
        while not done():  # type: ignore[operator]
            await anyio.sleep(0.01)


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joblog, "JOB_LOG_FLUSH_INTERVAL_S", 0.05)


def test_reports_are_acknowledged_once_taken_in_order_never_before(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """1 and 2 wait in memory while the store is down: not acknowledged. 3 passes the bound:
    the queue goes to the spool first, then 3, so all three are acknowledged while the store is
    still down (was: 3 was spooled, but nothing acknowledged until the store was back, and the
    agent's unacknowledged reports grew meanwhile), and written once when it is back."""
    src, web = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet)
    outage = _Outage(fleet, monkeypatch)

    async def main() -> None:
        async with _master(fleet, tmp_path / "spool") as (port, writer):
            async with _link(port, web, CAPABILITIES) as framed:
                for seq in (1, 2):
                    await framed.send(_report(m, src.node_id, web.node_id, seq))
                await _until(lambda: writer.queued_records == 2 and outage.refused >= 2)
                assert not [x for x in await roundtrip(framed) if isinstance(x, ReportsTaken)]
                await framed.send(_report(m, src.node_id, web.node_id, 3))
                with anyio.fail_after(TIMEOUT_S):
                    while not (
                        isinstance(x := await framed.receive(), ReportsTaken) and x.upto == 3
                    ):
                        pass
                assert outage.down and fleet.store.job_log(mapping_id=m) == []
                outage.down = False
                await _until(lambda: writer.spooled_records == writer.queued_records == 0)
        rows = fleet.store.job_log(mapping_id=m)
        assert sorted(r.seq for r in rows) == [1, 2, 3]

    anyio.run(main)


@pytest.mark.parametrize("older", ["agent", "master"])
def test_without_report_ack_on_either_side_nothing_is_acknowledged(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, older: str
) -> None:
    src, web = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet)
    outage = _Outage(fleet, monkeypatch)
    outage.down = False

    async def main() -> None:
        master_caps = OLDER if older == "master" else CAPABILITIES
        agent_caps = OLDER if older == "agent" else CAPABILITIES
        async with _master(fleet, tmp_path / "spool", master_caps) as (port, writer):
            async with _link(port, web, agent_caps) as framed:
                await framed.send(_report(m, src.node_id, web.node_id, 1))
                await _until(lambda: writer.written_reports == 1)
                assert not [x for x in await roundtrip(framed) if isinstance(x, ReportsTaken)]

    anyio.run(main)


def test_a_report_written_in_pieces_is_acknowledged_with_its_last_piece(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A record the store refuses is dropped alone; its report is taken (and acknowledged) once
    the rest of it is written, and the next report after it."""
    src, web = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet)
    real = fleet.store.record_commit_reports

    def record(reports: list[CommitReport]) -> None:
        if any(rec.path == "poison.html" for r in reports for rec in r.records):
            raise StoreError("record commit reports: value too long for type character varying")
        real(reports)

    monkeypatch.setattr(fleet.store, "record_commit_reports", record)
    paths = ("f1.html", "poison.html", "f3.html")
    records = tuple(CommitRecord(seq=i, op="write", path=p) for i, p in enumerate(paths, 1))
    first = CommitReport(
        mapping_id=m, source_node=src.node_id, target_node=web.node_id, watermark=3, records=records
    )

    async def main() -> None:
        async with _master(fleet, tmp_path / "spool", in_memory=100) as (port, writer):
            async with _link(port, web, CAPABILITIES) as framed:
                await framed.send(first)
                await framed.send(_report(m, src.node_id, web.node_id, 4))
                with anyio.fail_after(TIMEOUT_S):
                    while not (
                        isinstance(x := await framed.receive(), ReportsTaken) and x.upto == 2
                    ):
                        pass
            assert writer.dropped_records == 1 and writer.spooled_records == 0
        assert sorted(r.seq for r in fleet.store.job_log(mapping_id=m)) == [1, 3, 4]

    anyio.run(main)


async def _acks_until_closed(framed: FramedStream) -> list[int]:
    """Every ReportsTaken the master sends until it closes the link."""
    seen: list[int] = []
    with anyio.fail_after(TIMEOUT_S):
        try:
            while True:
                if isinstance(x := await framed.receive(), ReportsTaken):
                    seen.append(x.upto)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return seen


@pytest.mark.parametrize("store_down", [False, True], ids=["store-up", "store-down"])
def test_a_graceful_stop_acknowledges_every_report_read_before_closing_the_link(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store_down: bool
) -> None:
    """The master's stop as it runs (service.serve_links_and_joblog): reading ends, the job log
    takes what was read (into the store, or the spool when the store is down, without waiting
    on it), the agent is told, and only then does the link close. Was: the link closed with the
    last flush unacknowledged, and the agent sent it again to the next run."""
    src, web = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet)
    outage = _Outage(fleet, monkeypatch)
    outage.down = store_down
    hanging, release = threading.Event(), threading.Event()
    if not store_down:  # the flush in flight when the stop comes, as on a busy database
        write = fleet.store.record_commit_reports

        def busy(reports: list[CommitReport]) -> None:
            hanging.set()
            release.wait(TIMEOUT_S)
            write(reports)

        monkeypatch.setattr(fleet.store, "record_commit_reports", busy)
    writer = JobLogWriter(fleet.store, fleet.events, spool_dir=tmp_path / "spool")
    control = ControlServer(
        host="127.0.0.1",
        port=0,
        ctx=tls.server_context(fleet.master),
        store=fleet.store,
        events=fleet.events,
        joblog=writer,
    )
    stopping = anyio.Event()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_links_and_joblog, writer, control, stopping)
            async with _link(port, web, CAPABILITIES) as framed:
                for seq in (1, 2, 3):
                    await framed.send(_report(m, src.node_id, web.node_id, seq))
                await roundtrip(framed)  # all three read
                await _until(lambda: outage.refused >= 1 or hanging.is_set())
                stopping.set()
                release.set()  # the store answers the write in flight (store-up)
                assert (await _acks_until_closed(framed))[-1:] == [3]
        where = writer.spooled_records if store_down else writer.written_reports
        assert where == 3

    anyio.run(main)


def test_a_stop_closes_the_links_within_its_bound_when_the_job_log_hangs(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A store write that never ends (a database gone mid-write) holds the job log's stop, not
    the links': they close after MASTER_STOP_TIMEOUT_S, unacknowledged, with a warning."""
    monkeypatch.setattr(control_module, "MASTER_STOP_TIMEOUT_S", 0.5)
    src, web = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet)
    hanging, release = threading.Event(), threading.Event()
    write = fleet.store.record_commit_reports

    def hang(reports: list[CommitReport]) -> None:
        hanging.set()
        release.wait(TIMEOUT_S)
        write(reports)

    monkeypatch.setattr(fleet.store, "record_commit_reports", hang)
    writer = JobLogWriter(fleet.store, fleet.events, spool_dir=tmp_path / "spool")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            control.joblog = writer
            async with anyio.create_task_group() as tg:
                await tg.start(writer.serve)
                async with _link(port, web, CAPABILITIES) as framed:
                    await framed.send(_report(m, src.node_id, web.node_id, 1))
                    await _until(hanging.is_set)
                    with anyio.fail_after(TIMEOUT_S):
                        await control.stop(writer.stop)
                    assert control.links  # not done: the serve's cancel closes it
                release.set()
                tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_report_is_acknowledged_once_the_purge_it_released_is_queued(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Written to the store, a report's purge lives in the purger's memory until its queue
    takes it (purge/holds.py): ReportsTaken waits for that, over the real link, so that a kill
    of the master in between has the agent send the report again (was: acknowledged at the
    write, and the purge was lost with the master)."""
    src, web = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet)
    fleet.store.create_site(
        name="www",
        provider="acme",
        mapping=m,
        base_urls=["http://www.example.com"],
        caches=[{"name": "v1", "driver": "varnish", "address": "127.0.0.1:9"}],
    )
    refused = [0]
    real_enqueue = fleet.store.enqueue_purges

    def enqueue(items: list[PurgeItem]) -> object:
        if refused[0] >= 0:
            refused[0] += 1
            cause = OperationalError("INSERT ...", {}, Exception("database is locked"))
            raise StoreError(f"write: {cause}") from cause
        return real_enqueue(items)

    monkeypatch.setattr(fleet.store, "enqueue_purges", enqueue)

    async def main() -> None:
        async with _master(fleet, tmp_path / "spool", in_memory=1_000) as (port, writer):
            purger = Purger(fleet.store, retry_min_s=0.05, retry_max_s=0.2)
            writer.subscribe(purger.on_commit_report, barrier=purger.barrier)
            async with anyio.create_task_group() as tg:
                await tg.start(purger.serve)
                async with _link(port, web, CAPABILITIES) as framed:
                    await framed.send(_report(m, src.node_id, web.node_id, 1))
                    await _until(lambda: writer.written_reports == 1 and refused[0] >= 2)
                    assert not [x for x in await roundtrip(framed) if isinstance(x, ReportsTaken)]
                    refused[0] = -1  # the purge queue takes writes again
                    with anyio.fail_after(TIMEOUT_S):
                        while not (
                            isinstance(x := await framed.receive(), ReportsTaken) and x.upto == 1
                        ):
                            pass
                    assert fleet.store.queued_purges() >= 1
                tg.cancel_scope.cancel()

    anyio.run(main)
