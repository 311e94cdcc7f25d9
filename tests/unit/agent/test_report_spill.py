"""The report queue's memory is bounded in bytes: big reports (many records, long paths) past the
bound wait in the outbox on disk only and are read back in order as the master takes the others,
after a restart too; none is lost. Without the outbox only the oldest are dropped, counted.

Before the bound, 100,000 reports were held whatever their size: reports of 2,000 records of
long paths hold MBs each, so a master down for long took the agent's memory by GBs."""

from __future__ import annotations

import errno
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from relaysync.agent import _outbox_segments as segments_module
from relaysync.agent import outbox as outbox_module
from relaysync.agent import report_queue
from relaysync.agent.outbox import ReportOutbox
from relaysync.agent.report_queue import ReportQueue
from relaysync.protocol.messages import ENCODER, CommitRecord, CommitReport
from tests.unit.agent.test_report_figures import own_figures

SRC, TGT = "a" * 64, "b" * 64
BOUND = 1024 * 1024  # about four of the reports below, estimated held
REPORTS = 40  # ~9 MiB of them held, were they all in memory
SLACK = 64 * 1024  # the outbox's and the queue's own structures
MAX_STEP_BYTES = 2 * 1024 * 1024  # read back at a time on the event loop (~16 ms)


def _big(n: int) -> CommitReport:
    """Report n: 200 records of 500-character paths (~110 KB encoded, ~230 KB held)."""
    records = tuple(
        CommitRecord(seq=n * 1000 + i, op="write", path=f"d/{n}/{i}/".ljust(500, "x"), size=i)
        for i in range(200)
    )
    return CommitReport(
        mapping_id=1, source_node=SRC, target_node=TGT, watermark=n, records=records
    )


def _outbox(base: Path) -> ReportOutbox:
    return ReportOutbox(base / "outbox", TGT, segment_bytes=1024 * 1024)


def _drain(queue: ReportQueue, lost: int = 0, *, checked: bool = True) -> list[int]:
    """What a master that takes every batch gets, in order; `checked`: the memory bound and
    the pending figure hold throughout (REPORTS reports of BOUND's test fed)."""
    got: list[int] = []
    markers = 0  # queued once the master takes reports, for those dropped (one mapping here)
    while queue.unsent:
        batch = queue.take_batch(64)
        queue.unacked.extend(batch)
        got += [item.report.watermark for item in batch if not is_marker(item.report)]
        markers += len(queue.lost.notes) - sum(is_marker(item.report) for item in batch)
        queue.taken(queue.acked + len(queue.unacked))
        if checked:
            assert queue.held_bytes <= BOUND
            pending = REPORTS - len(got) - queue.dropped - lost * (not queue.spilled)
            assert queue.pending == pending + markers
    return got


def is_marker(report: CommitReport) -> bool:
    """Whether `report` tells the master of reports dropped (agent/_lost_reports.py)."""
    return report.records[0].op == "lost"


def _fed(queue: ReportQueue) -> int:
    """Feed the reports, as built one at a time by the receiver; returns the bytes traced."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(REPORTS):
            queue.add(_big(n))
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_big_reports_past_the_byte_bound_wait_on_disk_and_none_is_lost(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=BOUND)
    held = _fed(queue)  # the master is down
    assert held <= BOUND + SLACK
    assert queue.held_bytes <= BOUND
    assert queue.pending == REPORTS and queue.dropped == 0
    assert 0 < len(queue.unsent) < REPORTS and box.unread == REPORTS - len(queue.unsent)
    assert _drain(queue) == list(range(REPORTS))
    assert queue.dropped == 0 and queue.pending == 0 and box.pending == 0


def test_a_killed_agent_reads_a_long_queue_back_in_order_without_holding_it(
    tmp_path: Path,
) -> None:
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=BOUND)
    _fed(queue)
    queue.unacked.extend(queue.take_batch(2))  # sent, not taken: the agent is killed
    fresh = _outbox(tmp_path)  # the next process on the same data directory
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        restarted = ReportQueue(fresh, fresh.open(BOUND), max_bytes=BOUND)
        assert tracemalloc.get_traced_memory()[0] - before <= BOUND + SLACK
    finally:
        tracemalloc.stop()
    assert restarted.pending == REPORTS and fresh.unread > 0
    assert _drain(restarted) == list(range(REPORTS))
    assert _outbox(tmp_path).open() == []


def test_a_report_the_disk_refuses_meanwhile_keeps_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports wait on disk; the disk then refuses one (kept in memory only, in its place), then
    works again: the master gets them in the order they came. Memory held, the one refused
    makes the oldest held go (documented): only it misses."""
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=BOUND)
    for n in range(REPORTS // 2):
        queue.add(_big(n))

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outbox_module.os, "pwrite", full)
    queue.add(_big(REPORTS // 2))
    monkeypatch.undo()
    for n in range(REPORTS // 2 + 1, REPORTS):
        queue.add(_big(n))
    assert queue.held_bytes <= BOUND and queue.dropped == 1
    assert _drain(queue) == list(range(1, REPORTS))


def test_the_count_bound_still_drops_the_oldest_on_disk_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 10)
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=BOUND)
    for n in range(15):
        queue.add(_big(n))
    assert queue.pending == 10 and queue.dropped == 5
    assert [r.watermark for r in _outbox(tmp_path).open()] == list(range(5, 15))
    got = []
    while queue.unsent:
        batch = queue.take_batch(64)
        queue.unacked.extend(batch)
        got += [(item.report.watermark, is_marker(item.report)) for item in batch]
        queue.taken(queue.acked + len(queue.unacked))
    # and, once the master took reports, the marker of the 5 dropped (of no watermark: it
    # moves none at the master, agent/_lost_reports.py `marker`)
    assert got == [(n, False) for n in range(5, 15)] + [(0, True)]


def test_without_an_outbox_the_byte_bound_drops_the_oldest_and_the_figures_say_so() -> None:
    queue = ReportQueue(max_bytes=BOUND)  # the outbox could not be opened: memory only
    held = _fed(queue)
    assert held <= BOUND + SLACK and queue.held_bytes <= BOUND
    kept = [item.report.watermark for item in queue.unsent]
    assert kept == list(range(REPORTS - len(kept), REPORTS))  # the newest, in order
    assert queue.dropped == REPORTS - len(kept) > 0
    figures = own_figures(queue)
    assert figures["commit_reports_pending"] == len(kept)
    assert figures["commit_reports_dropped"] == REPORTS - len(kept)


def test_a_frame_damaged_on_disk_while_it_waits_is_skipped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=BOUND)
    _fed(queue)
    last = sorted((tmp_path / "outbox" / TGT[:16]).glob("*.outbox"))[-1]
    with last.open("r+b") as f:  # a bit flips in the last report's payload
        f.seek(-10, 2)
        f.write(b"\xff")
    got = _drain(queue, lost=1)
    assert got == list(range(REPORTS - 1))
    assert "unreadable frame" in caplog.text
    assert queue.pending == 0 and box.pending == 0
    assert _outbox(tmp_path).open() == []


def _read_back_fails_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next read of a segment fails (EMFILE), as a process out of descriptors sees it."""
    real = outbox_module.os.pread

    def emfile(*args: object) -> bytes:
        monkeypatch.setattr(outbox_module.os, "pread", real)
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(outbox_module.os, "pread", emfile)


def test_a_failed_read_back_while_none_is_held_is_tried_again_at_the_next_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The master takes every report held, and reading the next back fails: none is held, so
    no ack comes to try it again. The next report (which wakes the link's writer) must."""
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=BOUND)
    for n in range(10):
        queue.add(_big(n))
    queue.unacked.extend(queue.take_batch(64))
    held = len(queue.unacked)
    _read_back_fails_once(monkeypatch)
    queue.taken(queue.acked + len(queue.unacked))
    assert not queue.unsent and queue.spilled_count == 10 - held and queue.stalled
    assert "cannot read back" in caplog.text
    queue.add(_big(10))
    assert [item.report.watermark for item in queue.unsent][:1] == [held]
    assert not queue.stalled and "read back again" in caplog.text
    assert _drain(queue, checked=False) == list(range(held, 11))


def test_an_ack_reads_back_one_step_and_the_writer_the_rest_between_sends(
    tmp_path: Path,
) -> None:
    """The reads back run on the event loop: an ack that frees room for many reports on disk
    reads back READ_BACK_STEP_BYTES of them (one report over at most), not all that fit (37 MB
    blocked the loop 70-330 ms); `read_back` reads the next step, up to the bound, in order."""
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=16 * BOUND)  # ~56 of them
    for n in range(150):
        queue.add(_big(n))
    queue.unacked.extend(queue.take_batch(64))
    held = len(queue.unacked)
    assert queue.spilled_count == 150 - held > held > 40
    queue.taken(queue.acked + len(queue.unacked))

    def read(items: list[int]) -> int:
        return sum(len(ENCODER.encode(_big(n))) for n in items)

    def sent() -> list[int]:  # as the writer does before it reads back again
        batch = queue.take_batch(64)
        queue.unacked.extend(batch)
        return [item.report.watermark for item in batch]

    step = sent()
    largest = len(ENCODER.encode(_big(149)))
    assert step and read(step) < MAX_STEP_BYTES
    while queue.read_back():
        got = sent()
        assert read(got) < MAX_STEP_BYTES
        step += got
    assert queue.held_bytes <= 16 * BOUND < queue.held_bytes + 3 * largest
    assert step == list(range(held, held + len(step))) and queue.spilled
    queue.taken(queue.acked + len(queue.unacked))
    assert step + _drain(queue, checked=False) == list(range(held, 150))


class _CountingDecoder:
    """The outbox's decoder, counting the reports it decodes."""

    def __init__(self, real: msgspec.msgpack.Decoder[CommitReport]) -> None:
        self.real, self.decoded = real, 0

    def decode(self, payload: bytes) -> CommitReport:
        self.decoded += 1
        return self.real.decode(payload)


def test_a_restart_decodes_only_the_reports_it_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`open` decoded every report on disk and kept those that fit the bound: a restart after a
    long outage (782 MB of reports, 128 MiB held) took 6.7-8.2 s, 1.0-1.6 s now. The others are
    found by their headers, and one damaged meanwhile is lost alone when read back, the rest in
    order."""
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=BOUND)
    _fed(queue)
    segment = sorted((tmp_path / "outbox" / TGT[:16]).glob("*.outbox"))[-2]
    data = bytearray(segment.read_bytes())
    data[-100] ^= 0xFF  # the payload of this segment's last report
    segment.write_bytes(bytes(data))
    counting = _CountingDecoder(segments_module.DECODER)
    monkeypatch.setattr(segments_module, "DECODER", counting)
    fresh = _outbox(tmp_path)
    replayed = fresh.open(BOUND)
    assert counting.decoded == len(replayed) + 1  # and the first that did not fit
    restarted = ReportQueue(fresh, replayed, max_bytes=BOUND)
    assert restarted.pending == REPORTS  # the damaged one too, until read back
    monkeypatch.undo()
    got = _drain(restarted, checked=False)
    assert len(got) == REPORTS - 1 and got == sorted(got)
    assert "unreadable frame" in caplog.text and restarted.pending == 0 == fresh.pending
    assert (segment.parent / (segment.name + ".bad")).exists()
