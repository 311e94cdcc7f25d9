"""The job log spool on real files: order across segments, restarts, torn and bad frames."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import anyio
import pytest

from relaysync.master import joblog, joblog_spool
from relaysync.master.events import EventBus
from relaysync.master.joblog import JobLogWriter
from relaysync.master.joblog_spool import JobLogSpool
from relaysync.protocol.messages import CommitRecord, CommitReport
from tests._tmpfs import mount_tmpfs, unmounted_at_exit

SRC, TGT = "a" * 64, "b" * 64
SEGMENT_BYTES = 4096  # four reports each, so that every test crosses segments
HEADER = struct.Struct(">III")  # the frame header: payload bytes, records, CRC-32 of the payload


def _report(n: int, records: int = 3) -> CommitReport:
    recs = tuple(
        CommitRecord(seq=n * records + k, op="write", path=f"dir/file-{n}-{k}.html")
        for k in range(1, records + 1)
    )
    return CommitReport(
        mapping_id=1, source_node=SRC, target_node=TGT, watermark=(n + 1) * records, records=recs
    )


def _spool(directory: Path) -> JobLogSpool:
    spool = JobLogSpool(directory, segment_bytes=SEGMENT_BYTES)
    spool.open()
    return spool


def _drain(spool: JobLogSpool, batch_records: int = 7) -> list[int]:
    """Read and release everything, batch by batch; returns the reports' numbers in order."""
    seen: list[int] = []
    while batch := spool.read(batch_records):
        seen += [r.watermark // 3 - 1 for r in batch]
        spool.release()
    return seen


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


def test_reports_come_back_in_order_across_segments_and_leave_nothing(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "spool")
    for first in range(0, 40, 8):
        spool.append([_report(n) for n in range(first, first + 8)])
    assert len(_segments(tmp_path / "spool")) > 3
    assert spool.records == 40 * 3
    batch = spool.read(7)
    assert [len(r.records) for r in batch] == [3, 3, 3]  # whole reports, up to the 7th record
    assert spool.records == 120  # read is not released
    spool.release()
    assert spool.records == 111
    assert _drain(spool) == list(range(3, 40))
    assert spool.records == 0
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_restart_reads_from_what_was_released(tmp_path: Path) -> None:
    """Released reports never come back; read but unreleased ones do (the store may not have
    them); none is lost."""
    spool = _spool(tmp_path / "spool")
    spool.append([_report(n) for n in range(20)])
    spool.read(12)
    spool.release()  # 0..3 are in the store
    spool.read(9)  # 4..6 read, then the master is killed before they are written
    again = _spool(tmp_path / "spool")
    assert again.records == 16 * 3
    assert _drain(again) == list(range(4, 20))


def test_appends_after_a_restart_go_after_what_was_left(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "spool")
    spool.append([_report(n) for n in range(5)])
    spool.close()
    again = _spool(tmp_path / "spool")
    again.append([_report(n) for n in range(5, 9)])
    assert _drain(again) == list(range(9))


def test_reads_name_the_reports_a_previous_run_spooled(tmp_path: Path) -> None:
    """The writer tells its subscribers of those again: that run's purger lost what it made of
    them. Reports this run appends or prepends are not named (its subscribers saw them)."""
    spool = _spool(tmp_path / "spool")
    spool.append([_report(n) for n in range(6)])
    spool.read(6)  # 0, 1 read, then the master is killed before they are written
    again = _spool(tmp_path / "spool")
    again.append([_report(n) for n in range(6, 9)])
    again.prepend([_report(n) for n in range(9, 11)])
    earlier: list[CommitReport] = []
    read = again.read(100, earlier)
    assert [r.watermark // 3 - 1 for r in read] == [9, 10, *range(9)]
    assert [r.watermark // 3 - 1 for r in earlier] == list(range(6))


def test_prepend_goes_before_everything_spooled(tmp_path: Path) -> None:
    """A stopping writer's memory queue is older than its spool: it is read first, next run."""
    spool = _spool(tmp_path / "spool")
    spool.append([_report(n) for n in range(10, 20)])
    spool.prepend([_report(n) for n in range(10)])
    spool.close()
    assert _drain(_spool(tmp_path / "spool")) == list(range(20))


def test_a_torn_last_frame_is_cut_off_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kill mid-append: the last frame's length says more than the file holds."""
    spool = _spool(tmp_path / "spool")
    spool.append([_report(n) for n in range(6)])
    spool.close()
    last = _segments(tmp_path / "spool")[-1]
    size = last.stat().st_size
    with last.open("r+b") as f:
        f.truncate(size - 5)
    again = _spool(tmp_path / "spool")
    assert "torn last frame" in caplog.text
    assert _drain(again) == list(range(5))
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_zero_filled_tail_is_cut_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A power cut can leave the file longer than what was written, filled with zeros."""
    spool = _spool(tmp_path / "spool")
    spool.append([_report(n) for n in range(2)])
    spool.close()
    last = _segments(tmp_path / "spool")[-1]
    with last.open("ab") as f:
        f.write(bytes(300))
    again = _spool(tmp_path / "spool")
    assert "torn last frame" in caplog.text
    assert _drain(again) == [0, 1]


def test_a_frame_failing_its_crc_is_skipped_alone_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped bit in one acknowledged report: only that report is lost (counted, and said in
    the warning); every later frame of its segment and every later segment is read, and the
    segment is kept for the operator instead of being deleted. The bit is in a path, so the
    payload still decodes: the CRC, not the decoder, must catch it. (The whole rest of the
    segment was lost, uncounted.)"""
    spool = _spool(tmp_path / "spool")
    for n in range(12):
        spool.append([_report(n)])
    spool.close()
    first = _segments(tmp_path / "spool")[0]
    frames = _frames(first)
    assert len(frames) >= 3
    data = first.read_bytes()
    at = data.index(b"file-1-2", frames[1][0])
    _rewrite(first, at, b"fild")  # the 2nd report's payload, a bit flipped in a path
    caplog.clear()
    again = _spool(tmp_path / "spool")
    assert "1 frames fail their CRC, their 3 records" in caplog.text
    assert again.records == 12 * 3
    assert _drain(again) == [0, *range(2, 12)]
    assert again.lost_records == 3 and again.records == 0
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [first.name + ".bad"]


def test_an_unreadable_header_in_the_middle_ends_its_segment_which_is_kept_as_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame whose length cannot be believed: nothing after it can be found, so what precedes
    it and every later segment are read, and the segment is kept, not cut as a torn tail."""
    spool = _spool(tmp_path / "spool")
    for n in range(12):
        spool.append([_report(n)])
    spool.close()
    first = _segments(tmp_path / "spool")[0]
    frames = _frames(first)
    size = first.stat().st_size
    _rewrite(first, frames[1][0], HEADER.pack(0, 3, 0))  # the 2nd report's length: zero
    caplog.clear()
    again = _spool(tmp_path / "spool")
    assert "unreadable frame" in caplog.text
    assert _drain(again) == [0, *range(len(frames), 12)]
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [first.name + ".bad"]
    assert (tmp_path / "spool" / (first.name + ".bad")).stat().st_size == size


def test_a_torn_tail_after_a_skipped_frame_is_kept_not_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A segment with a frame failing its CRC is evidence: a bad last frame after it is not
    cut off (the .bad file keeps every byte), and the frames between are read."""
    spool = _spool(tmp_path / "spool")
    spool.append([_report(n) for n in range(4)])
    spool.close()
    (segment,) = _segments(tmp_path / "spool")
    frames = _frames(segment)
    size = segment.stat().st_size
    _rewrite(segment, frames[1][0] + HEADER.size + 5, b"\xff")
    _rewrite(segment, frames[3][0] + HEADER.size + 5, b"\xff")
    again = _spool(tmp_path / "spool")
    assert _drain(again) == [0, 2]
    assert again.lost_records == 3
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [segment.name + ".bad"]
    assert (tmp_path / "spool" / (segment.name + ".bad")).stat().st_size == size


def test_an_undecodable_frame_is_skipped_alone_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame intact on disk that does not decode (written by another version, say)."""
    spool = _spool(tmp_path / "spool")
    spool.append([_report(n) for n in range(3)])
    spool.close()
    (segment,) = _segments(tmp_path / "spool")
    offset, length = _frames(segment)[1]
    payload = (
        b"\xc1" + segment.read_bytes()[offset + HEADER.size + 1 : offset + HEADER.size + length]
    )
    _rewrite(segment, offset, HEADER.pack(length, 3, zlib.crc32(payload)) + payload)
    again = _spool(tmp_path / "spool")
    assert _drain(again) == [0, 2]
    assert "cannot be decoded" in caplog.text
    assert again.lost_records == 3 and again.records == 0
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [segment.name + ".bad"]


def _frames(path: Path) -> list[tuple[int, int]]:
    """(offset, payload bytes) of each frame of a segment."""
    data, out, offset = path.read_bytes(), [], 0
    while offset < len(data):
        length = HEADER.unpack_from(data, offset)[0]
        out.append((offset, length))
        offset += HEADER.size + length
    return out


def _rewrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_failed_append_to_a_new_segment_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk full at a new segment's first write: the segment's empty file was left behind
    (found under load: the tail then went to the store straight from memory, nothing read from
    the spool was released, and the spool never forgot the empty segment)."""
    spool = _spool(tmp_path / "spool")

    def full(fd: int, data: bytes, offset: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(joblog_spool, "_write_all", full)
    with pytest.raises(OSError):
        spool.append([_report(0)])
    assert _segments(tmp_path / "spool") == [] and spool.records == 0
    monkeypatch.undo()
    spool.append([_report(1)])  # the disk has room again: a segment as usual
    assert _drain(spool) == [1] and _segments(tmp_path / "spool") == []


def test_an_append_cut_short_by_a_full_disk_does_not_spoil_the_next_one(tmp_path: Path) -> None:
    """Found in review: a write that filled the disk part-way left the descriptor past the end
    the ftruncate restored; the next append (once a drained segment freed room) landed after a
    hole of zeros, and the reports read back were lost. Appends now write at the segment's end."""
    where = tmp_path / "spool"
    with unmounted_at_exit(where):
        mount_tmpfs(where, size="8k")  # two pages
        spool = JobLogSpool(where, segment_bytes=1 << 20)  # one segment: appends share its fd
        spool.open()
        spool.append([_report(n) for n in range(3)])  # ~2.5 KB: the first page
        with pytest.raises(OSError):  # ~10 KB: fills the second page, then ENOSPC
            spool.append([_report(n) for n in range(100, 112)])
        (segment,) = _segments(where)
        assert segment.stat().st_size == spool._segments[0].size  # cut back
        spool.append([_report(200)])  # room again
        assert _drain(spool) == [0, 1, 2, 200] and spool.lost_records == 0


def _one(n: int) -> CommitReport:
    return CommitReport(
        mapping_id=1,
        source_node=SRC,
        target_node=TGT,
        watermark=n,
        records=(CommitRecord(seq=n, op="write", path=f"f{n}"),),
    )


class _ListStore:
    def __init__(self) -> None:
        self.written: list[int] = []

    def record_commit_reports(self, reports: list[CommitReport]) -> None:
        self.written += [r.watermark for r in reports]


def test_older_spooled_reports_go_before_newer_ones_after_an_undecodable_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a batch that read back empty because its only frame could not be
    decoded was taken for the end of the spool, and the reports that came since were written
    before the older ones still on disk (and the lost frame's segment was never released)."""
    monkeypatch.setattr(joblog, "FLUSH_RECORDS", 10)
    monkeypatch.setattr(joblog, "JOB_LOG_FLUSH_INTERVAL_S", 0.05)
    spool_dir = tmp_path / "spool"
    spool = JobLogSpool(spool_dir)
    spool.open()
    spool.append([_one(1)])  # a placeholder, replaced below by a bad frame of 10 records
    spool.append([_one(n) for n in (2, 3, 4)])  # older than anything that comes next
    spool.close()
    (seg,) = sorted(spool_dir.glob("*.spool"))
    good = seg.read_bytes()
    first_len = HEADER.unpack(good[:12])[0]
    bad_payload = b"\xc0"  # msgpack nil: CRC-valid, not a CommitReport
    bad = HEADER.pack(len(bad_payload), 10, zlib.crc32(bad_payload)) + bad_payload
    seg.write_bytes(bad + good[12 + first_len :])

    store = _ListStore()
    writer = JobLogWriter(store, EventBus(), spool_dir=spool_dir)  # type: ignore[arg-type]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(writer.serve)
            writer.add(_one(100))  # arrives after the master restarted
            with anyio.fail_after(10):
                while len(store.written) < 4:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert store.written == [2, 3, 4, 100]
    assert list(spool_dir.glob("*.spool")) == [] and writer.spooled_records == 0


def test_every_append_is_on_disk_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report in the spool is acknowledged to its agent, which then forgets it: an append
    must outlive a power loss, not only a kill (each is fdatasynced, a new segment's name too)."""
    synced: list[str] = []
    datasync, dir_sync = joblog_spool.os.fdatasync, joblog_spool.fsync_dir
    monkeypatch.setattr(
        joblog_spool.os, "fdatasync", lambda fd: (synced.append("data"), datasync(fd))[1]
    )
    monkeypatch.setattr(joblog_spool, "fsync_dir", lambda d: (synced.append("dir"), dir_sync(d))[1])
    spool = _spool(tmp_path / "spool")
    spool.append([_report(1)])
    assert synced == ["dir", "data"]  # a new segment: its name, then its frame
    spool.append([_report(2)])
    assert synced == ["dir", "data", "data"]
    spool.close()


def test_a_new_segment_whose_name_cannot_be_made_durable_leaves_nothing_half_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the directory's fsync failing (EIO, EMFILE) after the new segment's file
    was opened left its descriptor as the one to append to while the segment was never listed:
    the next appends went into the new file counted as the old segment's, and the reports
    acknowledged from them were gone after a restart."""
    where = tmp_path / "spool"
    spool = _spool(where)
    spool.append([_report(0)])
    spool.close()
    spool = _spool(where)  # a restart: the next append starts a new segment
    real = joblog_spool.fsync_dir

    def fail_once(directory: Path) -> None:
        monkeypatch.setattr(joblog_spool, "fsync_dir", real)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(joblog_spool, "fsync_dir", fail_once)
    with pytest.raises(OSError):
        spool.append([_report(1)])
    spool.append([_report(1)])  # the writer keeps it in memory and tries again
    spool.append([_report(2)])
    spool.close()
    assert _drain(_spool(where)) == [0, 1, 2]


def test_reports_arriving_while_the_tail_goes_to_disk_do_not_keep_the_store_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the flush appended the tail to the spool until it was empty, and each
    append (an fdatasync: 20 ms on a slow disk) let new reports in, so under a steady stream the
    flush never got to the store (0 reports written in 10 s). It appends what the tail held when
    it began; the rest waits for the next flush. Here each append lets one more report in, for
    at most ARRIVALS appends: the store must be written to before they run out."""
    arrivals = 200
    store = _ListStore()
    writer = JobLogWriter(  # type: ignore[arg-type]
        store, EventBus(), spool_dir=tmp_path / "spool", max_queued_records=10
    )
    append = JobLogSpool.append
    left = [arrivals]

    def append_while_reports_arrive(spool: JobLogSpool, reports: list[CommitReport]) -> None:
        append(spool, reports)
        if left[0] and not store.written:
            left[0] -= 1
            anyio.from_thread.run_sync(writer.add, _report(1000 + left[0]))

    monkeypatch.setattr(JobLogSpool, "append", append_while_reports_arrive)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(writer.serve)
            for n in range(20):  # past the bound: spooling
                writer.add(_report(n))
            with anyio.fail_after(30):
                while not store.written:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert left[0] > 0, "the store was written only once the arrivals stopped"
