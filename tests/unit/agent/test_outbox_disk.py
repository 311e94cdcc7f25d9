"""The report outbox on a real small disk (a tmpfs the test mounts): its bound in bytes, and a
disk that fills below it.

Before the bound the outbox was bounded by count only (100,000 reports, up to 2 MiB each): with
the master down for long and a busy origin it filled the agent's disk."""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path

import pytest

from relaysync.agent.outbox import ReportOutbox
from relaysync.agent.report_queue import ReportQueue
from relaysync.protocol.messages import CommitRecord, CommitReport
from tests._tmpfs import mount_tmpfs, unmounted_at_exit
from tests.unit.agent.test_report_drops import Master
from tests.unit.agent.test_report_figures import own_figures

SRC, TGT = "a" * 64, "b" * 64
SEGMENT_BYTES = 256 * 1024


def _report(n: int, records: int) -> CommitReport:
    recs = tuple(
        CommitRecord(seq=n, op="write", path=f"d/{n}/{i}/".ljust(200, "x"), size=i)
        for i in range(records)
    )
    return CommitReport(mapping_id=1, source_node=SRC, target_node=TGT, watermark=n, records=recs)


def _reports(taken: list[int]) -> list[int]:
    """The reports the master took, from its records' seqs (all of report n's are n)."""
    return [n for n, _ in itertools.groupby(taken)]


def _outbox(where: Path) -> ReportOutbox:
    return ReportOutbox(where / "outbox", TGT, segment_bytes=SEGMENT_BYTES)


def _used(where: Path) -> int:
    return sum(p.stat().st_size for p in (where / "outbox").rglob("*") if p.is_file())


def test_the_outbox_stays_within_its_bytes_and_drops_the_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The master is down: 8 MiB of reports into an outbox bounded at 2 MiB, on a 4 MiB disk.
    Appends never fail; the oldest go, counted and logged as errors; the rest arrive in order."""
    where = tmp_path / "disk"
    bound = 2 * 1024 * 1024
    with unmounted_at_exit(where):
        mount_tmpfs(where, size="4m")
        box = _outbox(where)
        queue = ReportQueue(box, box.open(), max_bytes=256 * 1024, max_disk_bytes=bound)
        for n in range(400):  # ~21 KB each
            queue.add(_report(n, 100))
            assert _used(where) <= bound + SEGMENT_BYTES
        assert "cannot append" not in caplog.text
        assert any(r.levelno == logging.ERROR and "disk" in r.getMessage() for r in caplog.records)
        assert queue.dropped > 0 and queue.pending + queue.dropped == 400
        assert queue.pending * 21_000 > bound / 2  # the bound is used, not emptied
        figures = own_figures(queue)
        assert figures["commit_reports_dropped"] == queue.dropped
        segments = (where / "outbox").rglob("*.outbox")
        assert figures["commit_outbox_bytes"] == sum(p.stat().st_size for p in segments)
        restarted = ReportQueue(_outbox(where), _outbox(where).open(), max_disk_bytes=bound)
        master = Master()
        while restarted.unsent or restarted.read_back():
            master.send(restarted, 64)
            master.take(restarted, len(master.sent))
        assert _reports(master.taken) == list(range(queue.dropped, 400))


@pytest.mark.parametrize("seed", range(6))
def test_a_full_disk_below_the_bound_loses_nothing_and_corrupts_nothing(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk fills before the bound (a 1 MiB tmpfs, a 64 MiB bound): appends fail (ENOSPC),
    those reports are kept in memory only, in their place; as the master takes reports the disk
    has room again and appends go on. A restart reads back a whole outbox, in order."""
    rng = random.Random(seed)
    where = tmp_path / "disk"
    with unmounted_at_exit(where):
        mount_tmpfs(where, size="1m")
        box = _outbox(where)
        queue = ReportQueue(box, box.open(), max_disk_bytes=64 << 20)
        master = Master()
        added = 0
        for _ in range(300):
            step = rng.random()
            if step < 0.7:
                queue.add(_report(added, rng.choice([1, 20, 100])))
                added += 1
            elif step < 0.85:
                master.send(queue, rng.randint(1, 64))
            elif master.acked < len(master.sent):
                master.take(queue, rng.randint(master.acked + 1, len(master.sent)))
        assert "cannot append" in caplog.text  # the disk did fill
        assert queue.dropped == 0
        on_disk = [r.watermark for r in _outbox(where).open()]
        assert on_disk == sorted(on_disk)
        assert set(on_disk) <= set(range(added)) - set(master.taken)
        queue.session_over()
        master.session()
        while queue.unsent or queue.read_back():
            master.send(queue, 64)
            master.take(queue, len(master.sent))
        assert _reports(master.taken) == list(range(added))
        assert _outbox(where).open() == []
