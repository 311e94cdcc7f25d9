"""The job log spool: an append-only queue on disk of the commit reports the store cannot take yet.

The job log writer (master/joblog.py) keeps a bounded number of records in memory; while the
store is behind (down, or slower than the fleet), the rest comes here in the order it arrived and
is read back in batches once the store takes writes again.

Layout: a directory (`<data_dir>/joblog-spool`) of segment files `<n>.spool`, n in 16 hex digits,
read in the order of n. Appends go to the last segment, and to a new one past SEGMENT_BYTES;
numbers start at FIRST_SEGMENT so that `prepend()` has room below. `<n>.offset` holds the offset
of segment n's first report not yet in the store (a restart reads from there); a segment is
deleted once its last report is. A frame is a 12-byte header (payload bytes, records, CRC-32 of
the payload; big-endian) and one CommitReport encoded as on the wire (protocol ENCODER).

Error handling: every append is fdatasynced (and a new segment's directory entry fsynced), as are
`close()` and `prepend()`: a report in the spool is acknowledged to its agent, which then forgets
it, so it must outlive a power loss too, not only a kill (one fdatasync per append of about
FLUSH_RECORDS records, and only while the store is down). A crash mid-append leaves at most a torn
last frame: `open()` cuts it off with a warning. A frame before the end of its segment whose
payload fails its CRC (a flipped bit) is skipped alone, its records counted in `lost_records` (one
if its header's count is implausible), and reading goes on with the next frame; a frame whose
header is unreadable (its length implausible) ends what is read of that segment. Either way the
file is kept as `<n>.spool.bad` for the operator instead of being deleted, with a warning. A
frame whose report cannot be decoded is skipped the same way (counted in `lost_records`). A failed
append (a full disk) raises OSError and leaves nothing of its batch on disk. A crash between a
store write and `release()` reads that batch again, or, while releases fail (a full disk: the
offset file cannot be written; the writer reads on once the batch's purges are queued), what was
read of the segment since the last release that worked (up to a segment): the store takes a
repeated report as a repeat (no second change row or advance; a failure or catch-up record counts
again).

Resource handling: the last segment stays open for appends until a new one starts, it is
drained, or `close()`. Not thread-safe: one call at a time (the writer holds a lock).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from relaysync._util.kept_aside import keep_aside
from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.protocol.messages import ENCODER, CommitReport
from relaysync.transfer.staging import fsync_dir

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024  # a new segment past this: drained segments free their space
FIRST_SEGMENT = 1 << 32  # the first number of a fresh spool; prepend() counts down from it
# A report came in one wire frame of at most MAX_MESSAGE_BYTES and encodes to the same bytes.
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES
_HEADER = struct.Struct(">III")  # payload bytes, records, CRC-32 of the payload
_DECODER = msgspec.msgpack.Decoder(CommitReport)
_NAME = re.compile(r"[0-9a-f]{16}\.spool")


@dataclass
class _Segment:
    number: int
    path: Path
    size: int  # the end of its last whole frame
    records: int  # in its frames from read_to to size
    start: int = 0  # the first byte not yet in the store (its .offset file)
    read_to: int = 0  # the first byte not yet read back: start <= read_to <= size
    bad: bool = False  # a frame could not be read: kept as .bad once read, not deleted
    earlier: bool = False  # left by a previous run (open() found it)

    @property
    def offset_path(self) -> Path:
        return self.path.with_suffix(".offset")


class JobLogSpool:
    """Commit reports on disk, in order: `append`, then `read` a batch, write it, `release` it."""

    def __init__(self, directory: Path, *, segment_bytes: int | None = None) -> None:
        self.directory = directory
        self.segment_bytes = SEGMENT_BYTES if segment_bytes is None else segment_bytes
        self.records = 0  # spooled and not yet released
        self.lost_records = 0  # in frames that could not be decoded (logged as warnings)
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the last segment's, open for appends
        self._read_records = 0  # read back and not yet released

    def open(self) -> int:
        """Take up what a previous run left (cutting torn last frames off); returns its records.

        Raises:
            OSError: the directory cannot be made or read.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink()
        for path in sorted(self.directory.glob("*.spool"), key=lambda p: p.name):
            if not _NAME.fullmatch(path.name):
                logger.warning("job log spool: ignoring %s (not a segment name)", path)
                continue
            segment = _scan(path, int(path.stem, 16), _saved_offset(path))
            if segment.read_to < segment.size:
                segment.earlier = True
                self._segments.append(segment)
                self.records += segment.records
            else:
                _remove(segment)
        for stale in self.directory.glob("*.offset"):
            if not stale.with_suffix(".spool").exists():
                stale.unlink()
        return self.records

    def append(self, reports: Sequence[CommitReport]) -> None:
        """Add `reports` at the end, all or none.

        Raises:
            OSError: the disk is full or failing; nothing of `reports` is kept.
        """
        data, records = _encode(reports)
        if not data:
            return
        segment, fd = self._tail(len(data))
        try:
            _write_all(fd, data, segment.size)
            os.fdatasync(fd)  # acknowledged once here: see the module's docstring
        except OSError:
            with contextlib.suppress(OSError):  # the disk is failing already: cut what we can
                os.ftruncate(fd, segment.size)
                if segment.size == 0:  # a new segment nothing went to: no file left behind
                    self._close_fd()
                    self._segments.remove(segment)
                    segment.path.unlink()
            raise
        segment.size += len(data)
        segment.records += records
        self.records += records

    def prepend(self, reports: Sequence[CommitReport]) -> None:
        """Put `reports` before everything spooled, durably: a stopping writer's memory queue,
        older than what it spooled.

        Raises:
            OSError: the disk is full or failing; nothing of `reports` is kept.
        """
        if not self._segments:
            self.append(reports)
            return
        data, records = _encode(reports)
        if not data:
            return
        number = self._segments[0].number - 1
        path = self._path(number)
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as f:
                f.write(data)
                os.fsync(f.fileno())
            tmp.replace(path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(self.directory)
        self._segments.insert(0, _Segment(number, path, len(data), records))
        self.records += records

    def read(
        self, max_records: int, earlier: list[CommitReport] | None = None
    ) -> list[CommitReport]:
        """The next reports after those read already: whole reports, at least one if any is
        left, and no more once `max_records` records are reached. `release()` them once written.
        Those a previous run spooled (found by `open()`) are appended to `earlier` too."""
        out: list[CommitReport] = []
        wanted = max_records
        for segment in self._segments:
            if wanted <= 0:
                break
            if segment.read_to < segment.size:
                first = len(out)
                wanted -= self._read_segment(segment, wanted, out)
                if segment.earlier and earlier is not None:
                    earlier.extend(out[first:])
        if not out and self._read_records:  # only lost records were left: nothing to write
            self.release()
        return out

    def _read_segment(self, segment: _Segment, wanted: int, out: list[CommitReport]) -> int:
        """Read reports of `segment` into `out` until `wanted` records; returns the records read
        (lost ones, undecodable or unreadable, are consumed but do not count: a batch that met
        only those must not look like the end of the spool while more follows)."""
        records = 0
        try:
            with segment.path.open("rb") as f:
                f.seek(segment.read_to)
                while segment.read_to < segment.size and records < wanted:
                    records += self._read_frame(f, segment, out)
        except (OSError, struct.error) as exc:  # a disk error, or the file changed under us
            logger.warning(
                "job log spool: %s: cannot read at byte %s, %s records are lost (the file is "
                "kept as .bad): %s",
                segment.path,
                segment.read_to,
                segment.records,
                exc,
            )
            self.lost_records += segment.records
            self._consume(segment, segment.size, segment.records)
            segment.bad = True
        return records

    def _read_frame(self, f: BinaryIO, segment: _Segment, out: list[CommitReport]) -> int:
        """Read the frame at `segment.read_to` into `out`; returns its records (0 if lost)."""
        length, count, crc = _HEADER.unpack(f.read(_HEADER.size))
        payload = f.read(length)
        end = segment.read_to + _HEADER.size + length
        if zlib.crc32(payload) != crc:  # a bad bit may still decode, as another report
            return self._lose(segment, end, _frame_records(count, length), "fails its CRC")
        try:
            out.append(_DECODER.decode(payload))
        except msgspec.DecodeError as exc:
            return self._lose(segment, end, count, f"cannot be decoded: {exc}")
        return self._consume(segment, end, count)

    def _lose(self, segment: _Segment, end: int, records: int, why: str) -> int:
        """Skip the frame at `segment.read_to`, up to `end`, as lost; returns 0."""
        logger.warning(
            "job log spool: %s: the frame at byte %s %s; its %s records are lost (skipped, "
            "the file is kept as .bad)",
            segment.path,
            segment.read_to,
            why,
            records,
        )
        segment.bad = True
        self.lost_records += records
        self._consume(segment, end, records)
        return 0

    def _consume(self, segment: _Segment, to: int, records: int) -> int:
        segment.read_to = to
        segment.records -= records
        self._read_records += records
        return records

    def release(self) -> None:
        """Everything read is in the store: delete the segments it used up (reads go in order:
        they come first) and note the offset in the next one.

        Raises:
            OSError: the disk is failing; what was done stays done, the rest is tried again.
        """
        segments = self._segments
        while segments and segments[0].read_to == segments[0].size:
            if len(segments) == 1:
                self._close_fd()
            _remove(segments.pop(0))
        if segments and segments[0].read_to > segments[0].start:
            _save_offset(segments[0])
        self.records -= self._read_records
        self._read_records = 0

    def close(self) -> None:
        """Make what was appended durable and close the last segment."""
        if self._fd is not None:
            os.fsync(self._fd)
            self._close_fd()
            fsync_dir(self.directory)

    def _tail(self, size: int) -> tuple[_Segment, int]:
        """The segment to append `size` bytes to, and its descriptor: a new one when the last is
        full or was left by a previous run."""
        last = self._segments[-1] if self._segments else None
        fits = last is not None and (last.size == 0 or last.size + size <= self.segment_bytes)
        if last is not None and self._fd is not None and fits:
            return last, self._fd
        self._close_fd()
        number = last.number + 1 if last is not None else FIRST_SEGMENT
        path = self._path(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fsync_dir(self.directory)  # the new segment's name outlives a power loss too
        except BaseException:  # no segment, no file: the append fails whole (the caller's error)
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd = fd
        segment = _Segment(number, path, 0, 0)
        self._segments.append(segment)
        return segment, fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:016x}.spool"


def _encode(reports: Sequence[CommitReport]) -> tuple[bytes, int]:
    """The frames of `reports`, joined, and how many records they hold."""
    parts: list[bytes] = []
    records = 0
    for report in reports:
        payload = ENCODER.encode(report)
        parts.append(_HEADER.pack(len(payload), len(report.records), zlib.crc32(payload)))
        parts.append(payload)
        records += len(report.records)
    return b"".join(parts), records


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write `data` at `offset`: by position, not at the descriptor's, which a write cut short
    by a full disk leaves past the end that the ftruncate after it restores."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _saved_offset(path: Path) -> int:
    offset_path = path.with_suffix(".offset")
    try:
        return int(offset_path.read_text())
    except FileNotFoundError:
        return 0
    except ValueError:  # torn by a crash: reading the segment again repeats, never loses
        logger.warning(
            "job log spool: %s is unreadable, reading %s from its start", offset_path, path
        )
        return 0


def _save_offset(segment: _Segment) -> None:
    tmp = segment.offset_path.with_name(segment.offset_path.name + ".tmp")
    try:
        tmp.write_text(str(segment.read_to))
        tmp.replace(segment.offset_path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    segment.start = segment.read_to


def _scan(path: Path, number: int, start: int) -> _Segment:
    """Segment `path`, to be read from `start`, up to the end of its last whole frame: a torn
    last frame is cut off, a frame failing its CRC before the end is kept, to be skipped as
    lost when read, and an unreadable header ends it (the segment is marked bad either way)."""
    size = path.stat().st_size
    offset = 0
    records = 0  # from `start` on
    boundaries = {0}
    skipped = [0, 0]  # frames failing their CRC from `start` on, and their records
    with path.open("rb") as f:
        while offset < size:
            end, count, state = _frame_at(f, offset, size)
            if state is not _Frame.WHOLE and (state is _Frame.BROKEN or end == size):
                break  # only a torn last frame may fail its CRC: cut off below
            offset = end
            boundaries.add(end)
            records += count if end > start else 0
            if state is _Frame.CRC_FAILED and end > start:
                skipped = [skipped[0] + 1, skipped[1] + count]
        if start not in boundaries:  # never written so: read it all again rather than lose any
            logger.warning(
                "job log spool: %s: saved offset %s is not a frame's, reading from the start",
                path,
                start,
            )
            return _scan(path, number, 0)
        segment = _Segment(number, path, offset, records, start=start, read_to=start)
        if skipped[0]:
            logger.warning(
                "job log spool: %s: %s frames fail their CRC, their %s records will be "
                "skipped as lost; the file is kept as .bad",
                path,
                *skipped,
            )
            segment.bad = True
        if offset < size:
            _cut_or_keep(f, segment, size)
    return segment


class _Frame(enum.Enum):
    WHOLE = "whole"
    CRC_FAILED = "crc failed"  # its length plausible and all of it there: skippable
    BROKEN = "broken"  # its header unreadable, or past the end: nothing after it can be found


def _frame_at(f: BinaryIO, offset: int, size: int) -> tuple[int, int, _Frame]:
    """The frame at `offset`: its end and records as its header says (as `_frame_records`
    for one failing its CRC), and its state."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return size, 0, _Frame.BROKEN
    length, records, crc = _HEADER.unpack(header)
    end = offset + _HEADER.size + length
    if not 0 < length <= MAX_FRAME_BYTES or end > size:
        return end, records, _Frame.BROKEN
    if zlib.crc32(f.read(length)) != crc:
        return end, _frame_records(records, length), _Frame.CRC_FAILED
    return end, records, _Frame.WHOLE


def _frame_records(records: int, length: int) -> int:
    """The records of a frame failing its CRC: its header's count, or one if that is
    implausible (the flipped bit may be in the count; a record encodes to more than a byte)."""
    return records if 0 < records <= length else 1


def _cut_or_keep(f: BinaryIO, segment: _Segment, size: int) -> None:
    """What follows `segment`'s last whole frame: a torn last frame (longer than what remains,
    or bad and last, or zeros to the end) is cut off; anything else marks the segment bad."""
    f.seek(segment.size)
    end, _records, _state = _frame_at(f, segment.size, size)
    f.seek(segment.size)
    if not segment.bad and (end >= size or not f.read().strip(b"\0")):
        logger.warning(
            "job log spool: %s: cut off a torn last frame at byte %s (%s bytes; the master "
            "stopped while writing it)",
            segment.path,
            segment.size,
            size - segment.size,
        )
        os.truncate(segment.path, segment.size)
        return
    logger.warning(
        "job log spool: %s: unreadable frame at byte %s of %s; replaying what precedes it, "
        "the file is kept as .bad",
        segment.path,
        segment.size,
        size,
    )
    segment.bad = True


def _remove(segment: _Segment) -> None:
    """Delete a used-up segment (a bad one is kept as .bad), then its offset."""
    if segment.bad:
        with contextlib.suppress(FileNotFoundError):  # moved already by a release that failed
            keep_aside(segment.path)
    else:
        segment.path.unlink(missing_ok=True)
    segment.offset_path.unlink(missing_ok=True)
