"""The job log writer over a real store that goes down: memory stays bounded, the rest waits in
the spool on disk, and every record reaches the store once, in order, even across a stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest
from sqlalchemy.exc import OperationalError
from tests._tmpfs import mount_tmpfs, unmounted_at_exit

from relaysync.errors import StoreError
from relaysync.master import joblog, joblog_spool
from relaysync.master.events import EventBus
from relaysync.master.joblog import JobLogWriter
from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport

SRC = "a" * 64
TARGETS = {"t1": "b" * 64, "t2": "c" * 64, "t3": "d" * 64}
CAP = 100  # records in memory
BATCH = 30  # FLUSH_RECORDS: the spool is read back this many records at a time
REPORTS = 40  # per target
PER = 4  # journal records per report, plus one catch-up record (seq 0)
TIMEOUT_S = 20


class Outage:
    """The store's job-log write failing as a database that is down does, while `down` (the
    seam: the store, as in test_joblog_writer.py); `up_for` writes that many batches first."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        self.up_for: int | None = None
        self.refused = 0
        real = store.record_commit_reports

        def record(reports: list[CommitReport]) -> None:
            if self.up_for is not None:
                self.up_for -= 1
                self.down = self.up_for < 0
            if self.down:
                self.refused += 1
                cause = OperationalError("INSERT ...", {}, Exception("connection refused"))
                raise StoreError(f"record commit reports: {cause}") from cause
            real(reports)

        monkeypatch.setattr(store, "record_commit_reports", record)


@pytest.fixture
def mapping_id(store: Store) -> int:
    store.upsert_server(node_id=SRC, name="src", region="", group="", address="src:1")
    for name, node in TARGETS.items():
        store.upsert_server(node_id=node, name=name, region="", group="", address=f"{name}:1")
    return store.create_mapping(
        name="m", source="src", source_path="/a", targets=[(t, "/b") for t in TARGETS]
    ).id


@pytest.fixture(autouse=True)
def _small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joblog, "FLUSH_RECORDS", BATCH)
    monkeypatch.setattr(joblog, "JOB_LOG_FLUSH_INTERVAL_S", 0.05)
    monkeypatch.setattr(joblog_spool, "SEGMENT_BYTES", 8192)  # several segments


def _reports(m: int) -> Iterator[CommitReport]:
    """Every target's reports, interleaved as they arrive; each advances its watermark."""
    for i in range(REPORTS):
        for node in TARGETS.values():
            seqs = range(i * PER + 1, (i + 1) * PER + 1)
            records = [
                CommitRecord(seq=s, op="write", path=f"f{s}.html", committed_at=time.time())
                for s in seqs
            ]
            records.append(CommitRecord(seq=0, op="write", path=f"catchup/{i}.html"))
            yield CommitReport(
                mapping_id=m,
                source_node=SRC,
                target_node=node,
                watermark=seqs[-1],
                records=tuple(records),
            )


TOTAL = REPORTS * len(TARGETS) * (PER + 1)


def _assert_written_once_in_order(store: Store, m: int) -> None:
    """From the store's rows: every report advanced its target's watermark in turn (a report
    written out of order advances nothing), and each was written once (a catch-up record counts
    again when its report is written again)."""
    assert len(store.job_log(mapping_id=m, limit=10_000)) == REPORTS * PER
    for name in TARGETS:
        advances = [
            (a.from_seq, a.to_seq, a.files)
            for a in reversed(store.advances(mapping_id=m, target=name, limit=10_000))
        ]
        assert advances == [(i * PER, (i + 1) * PER, PER + 1) for i in range(REPORTS)]
    assert sorted(c.files for c in store.catchup(m)) == [REPORTS] * len(TARGETS)


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(TIMEOUT_S):
        while not condition():
            await anyio.sleep(0.01)


def _all_on_disk(writer: JobLogWriter) -> bool:
    """The spool task has written every report taken past the bound."""
    return writer._tail_records == writer._appending_records == 0


async def _with_writer(writer: JobLogWriter, body: Callable[[], Awaitable[None]]) -> None:
    """Run `writer` as the master does (in its task group) around `body`, then stop it."""
    async with anyio.create_task_group() as tg:
        await tg.start(writer.serve)
        await body()
        tg.cancel_scope.cancel()


def test_a_store_that_is_down_spools_past_the_bound_and_writes_every_record_once_it_is_back(
    store: Store,
    mapping_id: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Was: the queue grew without bound while the store was down (10 M records, gigabytes)."""
    caplog.set_level(logging.WARNING)
    outage = Outage(store, monkeypatch)
    outage.down = True
    spool_dir = tmp_path / "joblog-spool"
    writer = JobLogWriter(store, EventBus(), spool_dir=spool_dir, max_queued_records=CAP)
    peak = 0

    async def body() -> None:
        nonlocal peak
        for report in _reports(mapping_id):
            writer.add(report)
            peak = max(peak, writer.queued_records)
            await anyio.sleep(0)  # a report per receive, as the control links hand them over
        await _until(lambda: _all_on_disk(writer))
        # The queue went to the spool first, once the bound passed: all of it is on disk, and
        # memory holds at most a batch read back from there (it counts in both).
        assert writer.queued_records <= CAP
        assert writer.spooled_records == TOTAL
        assert len(list(spool_dir.glob("*.spool"))) > 1
        outage.down = False
        await _until(lambda: writer.spooled_records == writer.queued_records == 0)

    anyio.run(_with_writer, writer, body)
    assert peak <= CAP
    _assert_written_once_in_order(store, mapping_id)
    assert list(spool_dir.iterdir()) == []
    assert "the store is behind, spooling to" in caplog.text
    assert "is drained" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("on_disk", "up_for"),
    [(False, None), (True, None), (True, 3)],
    ids=["down-all-in-memory", "down", "down-again-mid-drain"],
)
def test_a_writer_stopped_while_the_store_is_down_loses_nothing_and_repeats_nothing(
    store: Store,
    mapping_id: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    on_disk: bool,
    up_for: int | None,
) -> None:
    """Was: the final flush failed and the queued reports were lost with the process. Stopped
    with reports in memory only (the queue, and those on their way to disk), with the queue in
    memory and the rest on disk (the queue goes in front), or after part of the spool was
    written: the next writer on the same directory writes each one once, in order."""
    outage = Outage(store, monkeypatch)
    outage.down = True
    spool_dir = tmp_path / "joblog-spool"
    first = JobLogWriter(store, EventBus(), spool_dir=spool_dir, max_queued_records=CAP)

    async def fill() -> None:
        for report in _reports(mapping_id):
            first.add(report)
        if on_disk:
            await _until(lambda: _all_on_disk(first))
        if up_for is not None:  # the store comes back, writes some batches, fails again
            refused = outage.refused
            outage.up_for = up_for
            await _until(lambda: outage.refused > refused)

    anyio.run(_with_writer, first, fill)
    assert first.queued_records == first._tail_records == 0  # all of it went to disk on stop
    outage.up_for, outage.down = None, False
    second = JobLogWriter(store, EventBus(), spool_dir=spool_dir, max_queued_records=CAP)

    async def drain() -> None:
        assert second.spooled_records > 0
        await _until(lambda: second.spooled_records == second.queued_records == 0)

    anyio.run(_with_writer, second, drain)
    _assert_written_once_in_order(store, mapping_id)
    assert list(spool_dir.iterdir()) == []


def test_a_torn_last_frame_is_skipped_with_a_warning_and_the_rest_written(
    store: Store,
    mapping_id: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The master killed while appending: the next start cuts the torn frame off and writes the
    reports before it."""
    spool_dir = tmp_path / "joblog-spool"
    spool = joblog_spool.JobLogSpool(spool_dir)
    spool.open()
    reports = list(_reports(mapping_id))
    spool.append(reports)
    spool.close()
    last = sorted(spool_dir.glob("*.spool"))[-1]
    with last.open("r+b") as f:
        f.truncate(last.stat().st_size - 3)
    writer = JobLogWriter(store, EventBus(), spool_dir=spool_dir)

    async def drain() -> None:
        await _until(lambda: writer.spooled_records == writer.queued_records == 0)

    anyio.run(_with_writer, writer, drain)
    assert "torn last frame" in caplog.text
    torn = reports[-1].target_node
    expected = {(n, REPORTS * PER - (PER if n == torn else 0)) for n in TARGETS.values()}
    assert {(w.target, w.seq) for w in store.watermarks(mapping_id)} == expected
    assert list(spool_dir.iterdir()) == []


def test_a_store_that_keeps_up_never_touches_the_disk(
    store: Store, mapping_id: int, tmp_path: Path
) -> None:
    """More records than the bound go by, a flush at a time: the spool stays empty, no file."""
    spool_dir = tmp_path / "joblog-spool"
    writer = JobLogWriter(store, EventBus(), spool_dir=spool_dir, max_queued_records=CAP)
    reports = list(_reports(mapping_id))

    async def body() -> None:
        for start in range(0, len(reports), 10):  # 50 records: below the bound, each time
            for report in reports[start : start + 10]:
                writer.add(report)
            await _until(lambda: writer.queued_records == 0)
            assert list(spool_dir.iterdir()) == []

    anyio.run(_with_writer, writer, body)
    _assert_written_once_in_order(store, mapping_id)
    assert list(spool_dir.iterdir()) == []


def test_a_full_disk_keeps_the_reports_in_memory_and_loses_none(
    store: Store,
    mapping_id: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The spool's disk fills up (ENOSPC) while the store is down: an error, once; the reports
    that do not fit stay in memory, over the bound, and all are written in order later."""
    outage = Outage(store, monkeypatch)
    outage.down = True
    spool_dir = tmp_path / "joblog-spool"
    with unmounted_at_exit(spool_dir):
        mount_tmpfs(spool_dir, size="24k")  # six pages: a fraction of what is spooled
        writer = JobLogWriter(store, EventBus(), spool_dir=spool_dir, max_queued_records=CAP)

        async def body() -> None:
            for report in _reports(mapping_id):
                writer.add(report)
                await anyio.sleep(0)
            await _until(lambda: "cannot write to the spool" in caplog.text)
            assert writer._tail_records + writer._appending_records > 0  # in memory, not lost
            # (a batch read back from the spool to be written counts in both meanwhile)
            held = writer.spooled_records + writer.queued_records
            assert TOTAL <= held <= TOTAL + BATCH
            outage.down = False
            await _until(lambda: writer.spooled_records == writer.queued_records == 0)

        anyio.run(_with_writer, writer, body)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "No space left on device" in errors[0].getMessage()
        _assert_written_once_in_order(store, mapping_id)
        assert list(spool_dir.iterdir()) == []


def _down_after_a_hanging_write(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> tuple[Outage, threading.Event, threading.Event]:
    """The store down, its first write hanging (as on a locked database: `hanging` is set)
    until `release` is set, then failing as every write does while the outage lasts."""
    outage = Outage(store, monkeypatch)
    outage.down = True
    hanging, release = threading.Event(), threading.Event()
    down_write = store.record_commit_reports

    def hang_then_fail(reports: list[CommitReport]) -> None:
        if not release.is_set():
            hanging.set()
            release.wait(TIMEOUT_S)
        down_write(reports)

    monkeypatch.setattr(store, "record_commit_reports", hang_then_fail)
    return outage, hanging, release


def test_once_spooling_starts_every_report_held_is_taken_while_the_store_is_still_down(
    store: Store, mapping_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the reports in memory when the bound passed (the queue, and the batch whose write
    was hanging) were taken only once the store was back, so none spooled after them could be
    acknowledged meanwhile and each agent's queue of unacknowledged reports grew toward its
    bound. Now they go to the spool first, in order: all are taken while the store is down,
    and written once, in order, when it is back."""
    outage, hanging, release = _down_after_a_hanging_write(store, monkeypatch)
    writer = JobLogWriter(store, EventBus(), spool_dir=tmp_path / "spool", max_queued_records=CAP)
    reports = list(_reports(mapping_id))
    taken: list[int] = []

    async def body() -> None:
        for i, report in enumerate(reports):
            writer.add(report, taken=partial(taken.append, i))
            if i == 0:  # the first flush takes it and hangs: it is the batch in flight
                await _until(hanging.is_set)
        await _until(lambda: writer._spooling is not None)
        release.set()  # the hanging write fails: the store is down
        await _until(lambda: len(taken) == len(reports))
        assert outage.refused >= 1 and store.job_log(mapping_id=mapping_id) == []
        assert sorted(taken) == list(range(len(reports)))  # the one in flight too, once
        outage.down = False
        await _until(lambda: writer.spooled_records == writer.queued_records == 0)

    anyio.run(_with_writer, writer, body)
    _assert_written_once_in_order(store, mapping_id)


def test_a_stop_while_a_failed_write_goes_back_to_the_spool_loses_nothing(
    store: Store, mapping_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a write hanging on a locked store failed after a stop had begun; its
    batch, on its way back into the spool, waited for the spool's lock inside the stop's
    cancelled scope, and the cancellation took it: the batch was in neither memory nor spool,
    and the reports spooled after it were acknowledged (lost for good for an older agent)."""
    outage, hanging, release = _down_after_a_hanging_write(store, monkeypatch)
    spool_dir = tmp_path / "spool"
    first = JobLogWriter(store, EventBus(), spool_dir=spool_dir, max_queued_records=CAP)
    reports = list(_reports(mapping_id))

    async def stop_during_the_write() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(first.serve)
            for i, report in enumerate(reports):
                first.add(report)
                if i == 0:  # the first flush takes it and hangs: the batch in flight
                    await _until(hanging.is_set)
            await _until(lambda: first._spooling is not None and _all_on_disk(first))
            tg.start_soon(first.stop)  # SIGTERM
            await _until(lambda: first._serving is not None and first._serving.cancel_called)
            release.set()  # the hanging write fails now, under the stop

    anyio.run(stop_during_the_write)
    outage.down = False
    second = JobLogWriter(store, EventBus(), spool_dir=spool_dir, max_queued_records=CAP)

    async def drain() -> None:
        await _until(lambda: second.spooled_records == second.queued_records == 0)

    anyio.run(_with_writer, second, drain)
    _assert_written_once_in_order(store, mapping_id)
