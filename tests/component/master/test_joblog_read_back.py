"""Reports read back from the job-log spool leave it batch by batch, each once it is written and
the purges released before it are queued (purge/holds.py), and the next batch is read only then:
a kill reads at most that one batch again. (A first version read the next batch before releasing
the last, so the spool was released only once empty: under steady load, never.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from tests.component.master.test_joblog_spooling import SRC, TARGETS, Outage, mapping_id

from relaysync.master import joblog
from relaysync.master.events import EventBus
from relaysync.master.joblog import JobLogWriter
from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.purge.holds import PurgeHold, Waiters

__all__ = ["mapping_id"]  # the fixture, used here by name
TIMEOUT_S = 20


def _report(m: int, seq: int) -> CommitReport:
    record = CommitRecord(seq=seq, op="write", path=f"f{seq}.html", committed_at=time.time())
    return CommitReport(
        mapping_id=m, source_node=SRC, target_node=TARGETS["t1"], watermark=seq, records=(record,)
    )


async def _until(condition: Callable[[], object], what: str) -> None:
    with anyio.fail_after(TIMEOUT_S):
        while not condition():
            await anyio.sleep(0.01)


def _spooling_writer(store: Store, tmp_path: Path, barriers: list[Waiters]) -> JobLogWriter:
    """A job-log writer that spools past one queued record, told to a purger whose barrier
    for each batch read back (added to `barriers`) is done once the test marks it queued."""

    def barrier() -> PurgeHold:
        hold, waiters = PurgeHold(), Waiters()
        waiters.add(hold)
        hold.seal()
        barriers.append(waiters)
        return hold

    writer = JobLogWriter(store, EventBus(), spool_dir=tmp_path / "spool", max_queued_records=1)
    writer.subscribe(lambda _report: None, barrier=barrier)
    return writer


def test_the_spool_is_released_batch_by_batch_as_their_purges_are_queued(
    store: Store, mapping_id: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(joblog, "FLUSH_RECORDS", 1)  # a batch read back is one report
    monkeypatch.setattr(joblog, "JOB_LOG_FLUSH_INTERVAL_S", 0.05)
    outage = Outage(store, monkeypatch)
    outage.down = True
    barriers: list[Waiters] = []  # one per batch read back: the purger's, not yet queued

    async def main() -> None:
        writer = _spooling_writer(store, tmp_path, barriers)
        flushes = [0]
        real_flush_queue = writer._flush_queue

        async def flush_queue() -> None:
            flushes[0] += 1
            await real_flush_queue()

        monkeypatch.setattr(writer, "_flush_queue", flush_queue)
        async with anyio.create_task_group() as tg:
            await tg.start(writer.serve)
            for seq in (1, 2, 3):
                writer.add(_report(mapping_id, seq))
            await _until(lambda: writer.spooled_records == 3, "the three reports spooled")
            outage.down = False
            await _until(lambda: writer.written_reports == 1, "the first read back and written")
            seen = flushes[0]
            await _until(lambda: flushes[0] >= seen + 3, "three more flushes")
            assert len(barriers) == 1 and writer.written_reports == 1  # nothing more read
            assert writer.spooled_records == 3  # kept: its purges are not queued
            for n in (1, 2, 3):
                barriers[n - 1].mark_queued()
                await _until(lambda n=n: writer.spooled_records == 3 - n, f"batch {n} released")
                if n < 3:
                    await _until(lambda n=n: len(barriers) == n + 1, f"batch {n + 1} read")
            assert writer.written_reports == 3
            tg.cancel_scope.cancel()
        assert sorted(r.seq for r in store.job_log(mapping_id=mapping_id)) == [1, 2, 3]

    anyio.run(main)


def test_an_outage_longer_than_the_wait_keeps_the_batch_until_its_purges_are_queued(
    store: Store, mapping_id: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Found in review: the wait for a batch's purges (SPOOL_PURGE_WAIT_S) was asked, and its
    clock run, at every flush while the store refused the batch itself; an outage longer than
    the wait ran it out, and once the store was back the batch left the spool at its write,
    its purges still in the purger's memory only (a kill -9 then lost them). Its clock now
    starts once the batch is written."""
    monkeypatch.setattr(joblog, "FLUSH_RECORDS", 1)  # a batch read back is one report
    monkeypatch.setattr(joblog, "JOB_LOG_FLUSH_INTERVAL_S", 0.05)
    outage = Outage(store, monkeypatch)
    outage.down = True
    barriers: list[Waiters] = []  # the purger's queue writes fail too while the store is down

    async def main() -> None:
        writer = _spooling_writer(store, tmp_path, barriers)
        writer._read_back.wait_s = 0.2
        async with anyio.create_task_group() as tg:
            await tg.start(writer.serve)
            for seq in (1, 2, 3):
                writer.add(_report(mapping_id, seq))
            await _until(lambda: len(barriers) == 1, "the first batch read back")
            read_at, refused = time.monotonic(), outage.refused
            await _until(
                lambda: time.monotonic() - read_at > 0.5 and outage.refused >= refused + 3,
                "its write refused for longer than the wait",
            )
            writer._read_back.wait_s = 3600.0  # from here on, no wait may run out
            outage.down = False
            await _until(lambda: writer.written_reports == 1, "the batch written")
            seen = [0]
            real_flush = writer.flush

            async def counted() -> None:
                seen[0] += 1
                await real_flush()

            monkeypatch.setattr(writer, "flush", counted)
            await _until(lambda: seen[0] >= 3, "three more flushes")
            assert writer.spooled_records == 3  # kept: its purges are not queued
            barriers[0].mark_queued()
            await _until(lambda: writer.spooled_records == 2, "the batch released once queued")
            tg.cancel_scope.cancel()

    anyio.run(main)
