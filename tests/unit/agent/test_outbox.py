"""The report outbox on real files: replay order across segments and restarts, compaction once
taken, torn frames and counts, the bound, a failing disk, and a former identity's outbox.

A "restart" opens a new ReportOutbox on the same directory without closing the old one: a kill
of the agent closes nothing either."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import anyio
import anyio.to_thread
import pytest

from relaysync.agent import outbox as outbox_module
from relaysync.agent import report_queue
from relaysync.agent.outbox import ReportOutbox
from relaysync.agent.report_queue import ReportQueue
from relaysync.agent.service import AgentService
from relaysync.protocol.messages import CommitRecord, CommitReport

SRC, TGT = "a" * 64, "b" * 64
SEGMENT_BYTES = 1024  # a few reports each, so that every test crosses segments


def _report(n: int) -> CommitReport:
    record = CommitRecord(seq=n, op="write", path=f"dir/file-{n}.html", size=n)
    return CommitReport(
        mapping_id=1, source_node=SRC, target_node=TGT, watermark=n, records=(record,)
    )


def _outbox(base: Path, segment_bytes: int = SEGMENT_BYTES) -> ReportOutbox:
    return ReportOutbox(base / "outbox", TGT, segment_bytes=segment_bytes)


def _opened(base: Path, segment_bytes: int = SEGMENT_BYTES) -> tuple[ReportOutbox, list[int]]:
    box = _outbox(base, segment_bytes)
    return box, [r.watermark for r in box.open()]


def _segments(base: Path) -> list[Path]:
    return sorted((base / "outbox" / TGT[:16]).glob("*.outbox"))


def test_reports_come_back_in_order_across_segments_and_restarts(tmp_path: Path) -> None:
    box, replayed = _opened(tmp_path)
    assert replayed == []
    for n in range(30):
        box.append(_report(n))
    assert len(_segments(tmp_path)) > 3
    box.consume(7)
    again, replayed = _opened(tmp_path)  # killed: 7..29 were not taken
    assert replayed == list(range(7, 30))
    for n in range(30, 35):  # new reports go after them, in a segment of their own
        again.append(_report(n))
    again.consume(3)
    assert _opened(tmp_path)[1] == list(range(10, 35))


def test_taken_reports_are_removed_from_disk_and_never_come_back(tmp_path: Path) -> None:
    box, _ = _opened(tmp_path)
    for n in range(40):
        box.append(_report(n))
    many = len(_segments(tmp_path))
    box.consume(35)
    assert len(_segments(tmp_path)) < many / 3  # whole segments taken are deleted
    assert box.pending == 5
    box.consume(5)
    assert box.pending == 0
    assert _opened(tmp_path)[1] == []
    assert len(_segments(tmp_path)) <= 1  # at most the one appends go to


def test_a_torn_last_frame_is_ignored_and_what_precedes_it_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box, _ = _opened(tmp_path)
    for n in range(3):
        box.append(_report(n))
    last = _segments(tmp_path)[-1]
    os.truncate(last, last.stat().st_size - 5)  # killed mid-append
    again, replayed = _opened(tmp_path)
    assert replayed == [0, 1]
    assert "torn last frame" in caplog.text
    again.append(_report(3))  # goes to a new segment, after the torn one
    assert _opened(tmp_path)[1] == [0, 1, 3]
    with last.open("ab") as f:  # a header alone, torn too
        f.write(b"\0\0")
    assert _opened(tmp_path)[1] == [0, 1, 3]


def test_a_frame_failing_its_crc_is_skipped_alone_and_taken_with_its_neighbours(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped bit in two reports mid-segment: only those two are lost (the rest of the
    segment was, with a warning blaming a torn last frame). `.done` counts frames, so a lost
    frame is taken along with the reports around it and a restart replays exactly the rest."""
    box, _ = _opened(tmp_path, segment_bytes=1 << 20)  # one segment
    for n in range(6):
        box.append(_report(n))
    (segment,) = _segments(tmp_path)
    data = bytearray(segment.read_bytes())
    for n in (1, 3):  # a bit of the path in the 2nd and 4th reports ("e" -> "d")
        data[data.index(f"dir/file-{n}.html".encode()) + 7] ^= 0x01
    segment.write_bytes(bytes(data))
    again, replayed = _opened(tmp_path)
    assert replayed == [0, 2, 4, 5]
    assert "2 frames fail their CRC" in caplog.text and "torn" not in caplog.text
    assert again.pending == 4
    again.consume(2)  # reports 0 and 2: frames 0 to 3
    assert again.pending == 2
    third, replayed = _opened(tmp_path)
    assert replayed == [4, 5]
    third.append(_report(6))  # a new segment: the old one can go once taken
    third.consume(2)
    assert third.pending == 1
    assert _opened(tmp_path)[1] == [6]
    assert (segment.parent / (segment.name + ".bad")).exists()


def test_a_torn_count_of_taken_reports_replays_them_rather_than_losing_any(
    tmp_path: Path,
) -> None:
    box, _ = _opened(tmp_path, segment_bytes=1 << 20)  # one segment
    for n in range(3):
        box.append(_report(n))
    box.consume(2)
    assert _opened(tmp_path)[1] == [2]
    done = _segments(tmp_path)[0].with_suffix(".done")
    done.write_bytes(done.read_bytes()[:-1] + b"\xff")  # its checksum no longer matches
    assert _opened(tmp_path)[1] == [0, 1, 2]  # repeats, which the master takes as such


def test_the_bound_drops_the_oldest_from_disk_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 3)
    box, _ = _opened(tmp_path)
    queue = ReportQueue(box)
    for n in range(5):
        queue.add(_report(n))
    assert queue.dropped == 2
    assert [q.report.watermark for q in queue.unsent] == [2, 3, 4]
    again, replayed = _opened(tmp_path)
    assert replayed == [2, 3, 4]
    for n in range(5, 7):  # more on disk than the bound: the oldest go at start
        again.append(_report(n))
    fresh = _outbox(tmp_path)
    restarted = ReportQueue(fresh, fresh.open())
    assert [q.report.watermark for q in restarted.unsent] == [4, 5, 6]
    assert restarted.dropped == 2
    assert _opened(tmp_path)[1] == [4, 5, 6]


def test_a_drop_while_a_batch_goes_keeps_memory_and_disk_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: to a master that does not acknowledge, a batch being sent was in neither
    `unsent` nor `unacked`, so a drop past the bound meanwhile took a newer report out of memory
    and the batch's first frame off the disk; the send failing, a kill lost that report. The
    batch stays at the queue's head while it goes (master_link._send_reports)."""
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 3)
    box, _ = _opened(tmp_path)
    queue = ReportQueue(box)
    for n in range(3):
        queue.add(_report(n))
    queue.unacked.extend(queue.take_batch(2))  # 0 and 1 go
    queue.add(_report(3))  # over the bound meanwhile: the oldest, 0, is dropped
    queue.session_over()  # the send failed
    in_memory = [q.report.watermark for q in queue.unsent]
    assert in_memory == [1, 2, 3]
    assert _opened(tmp_path)[1] == in_memory  # what a kill now would replay


def test_reports_merged_for_the_wire_are_taken_with_all_their_frames(tmp_path: Path) -> None:
    box, _ = _opened(tmp_path)
    queue = ReportQueue(box)
    for n in range(5):
        queue.add(_report(n))
    batch = queue.take_batch(64)
    queue.unacked.extend([batch[0], batch[1]._replace(frames=3), batch[4]])  # 1..3 merged
    queue.taken(2)
    assert _opened(tmp_path)[1] == [4]
    queue.session_over()
    assert [q.report.watermark for q in queue.unsent] == [4]


def test_a_report_that_cannot_be_appended_is_kept_in_memory_and_takes_no_other_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    box, _ = _opened(tmp_path)
    queue = ReportQueue(box)
    queue.add(_report(0))

    def full(*_: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outbox_module.os, "pwrite", full)
    queue.add(_report(1))
    monkeypatch.undo()
    queue.add(_report(2))
    assert [q.frames for q in queue.unsent] == [1, 0, 1]
    assert "kept in memory only" in caplog.text and "appends work again" in caplog.text
    queue.unacked.extend(queue.take_batch(2))
    queue.sent_to_unacknowledging()  # 0 and 1 went to a master that does not acknowledge
    assert _opened(tmp_path)[1] == [2]


def test_a_former_identitys_outbox_is_removed(tmp_path: Path) -> None:
    old = ReportOutbox(tmp_path / "outbox", "c" * 64)
    old.open()
    old.append(_report(0))
    assert _opened(tmp_path)[1] == []
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == [TGT[:16]]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sync_handles_cover_the_last_segment_and_a_new_segments_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A safe target syncs its outbox per checkpoint off the event loop, on duplicates: the
    directory too until a sync of it is confirmed (a new segment's name), and every handle is
    closed after."""
    box, _ = _opened(tmp_path, segment_bytes=1 << 20)  # one segment
    synced: list[str] = []
    monkeypatch.setattr(outbox_module.os, "fdatasync", lambda fd: synced.append("file"))
    monkeypatch.setattr(outbox_module.os, "fsync", lambda fd: synced.append("dir"))
    before = _open_fds()
    box.append(_report(0))  # a new segment
    sync = box.sync_handles()
    outbox_module.sync_and_close(sync)
    assert synced == ["file", "dir"]
    box.append(_report(1))  # the same segment; the directory's sync not yet confirmed
    outbox_module.sync_and_close(box.sync_handles())
    assert synced == ["file", "dir", "file", "dir"]
    box.dir_synced(sync.made)
    box.append(_report(2))
    outbox_module.sync_and_close(box.sync_handles())
    assert synced == ["file", "dir", "file", "dir", "file"]
    box.close()
    assert _open_fds() == before  # the duplicates are closed, and the outbox's own files


def test_a_report_spanning_segments_is_synced_in_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a checkpoint's report split into frames over several segments (a catch-up
    of 100,000 records: 50 frames over 3 segments) had only the last segment synced; the
    segments appends left since the last sync are kept open for it and synced too."""
    box, _ = _opened(tmp_path, segment_bytes=300)  # about two reports a segment
    files: list[int] = []
    monkeypatch.setattr(outbox_module.os, "fdatasync", lambda fd: files.append(os.fstat(fd).st_ino))
    monkeypatch.setattr(outbox_module.os, "fsync", lambda fd: None)
    for n in range(6):
        box.append(_report(n))
    outbox_module.sync_and_close(box.sync_handles())
    assert sorted(set(files)) == sorted(p.stat().st_ino for p in _segments(tmp_path))
    assert len(_segments(tmp_path)) >= 3
    box.close()


def test_a_safe_targets_reports_are_synced_before_the_checkpoint_goes_on(tmp_path: Path) -> None:
    """The receiver's report callback (AgentService._reporter), in its worker thread: for a
    target in safe durability the outbox is synced after the report is queued, before the
    callback returns (and so before the watermark is saved and acknowledged); in fast, not."""
    box, _ = _opened(tmp_path)
    calls: list[str] = []
    link = SimpleNamespace(
        report=lambda message: (calls.append("report"), box.append(message)),
        sync_reports=lambda: (
            calls.append("sync"),
            outbox_module.sync_and_close(box.sync_handles()),
        ),
    )
    service = SimpleNamespace(link=link, node_id="n" * 64)
    records = [CommitRecord(seq=1, op="write", path="f")]

    async def main(durable: bool) -> None:
        folder = SimpleNamespace(mapping_id=1, source_node="s" * 64, route=(), durable=durable)
        report = AgentService._reporter(service, folder)  # type: ignore[arg-type]
        await anyio.to_thread.run_sync(report, 1, records)

    anyio.run(main, True)
    assert calls == ["report", "sync"]
    anyio.run(main, False)
    assert calls == ["report", "sync", "report"]
    box.close()
