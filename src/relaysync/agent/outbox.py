"""The report outbox: an agent's commit reports on disk until the master has taken them.

A target commits a file, then queues a commit report for the master (agent/report_queue.py);
the queue is in memory, so a kill of the agent lost the reports the master had not taken yet:
the files were on the target, but the job log, `/api/stats` and the purge step never heard of
them. The queue now appends each report here before anyone is told of the commit (the source's
Ack waits on it), removes them as the master takes them, and reads the rest back at start.

Layout: `<data_dir>/outbox/<node id>/` (a new identity, after a join again, does not replay the
old one's reports, which the master would refuse as forged: they are removed with a warning),
segment files `<n>.outbox` (16 hex digits) read in the order of n. Appends go to the last
segment, and to a new one past SEGMENT_BYTES or at each start. A frame is an 8-byte header
(payload bytes, CRC-32 of the payload; big-endian) and one CommitReport as on the wire.
`<n>.done` holds how many of segment n's first frames are taken (8 bytes, pwritten in place);
a segment is deleted once all of its frames are.

Durability: appends and `.done` writes are not fsynced as they come. A kill of the agent (kill -9,
a crash, the OOM killer) loses nothing the kernel holds. For a target in `safe` durability, whose
files outlive a power loss, the reports must too (the master would never hear of those commits, nor
purge their URLs): its receiver syncs the outbox once per checkpoint, before the watermark is saved
and acknowledged, from its worker thread on the descriptors `sync_handles` gives (the segments
appends left since the last sync, kept open for it: a report may span segments; a duplicate of the
last one's; the directory's until a sync of it is confirmed). A `.done` count lost to a power loss
only replays reports, which the master takes as repeats. A torn last frame ends its segment's
reading (new appends go to a new segment), with a warning. A frame before the end of its segment
whose payload fails its CRC (a flipped bit) or does not decode is skipped alone, with a warning
that counts them: it still counts as one of the segment's frames (`.done` counts frames), taken
along with the reports around it, and the segment is kept as `<n>.outbox.bad` once taken.

Error handling: a failed append (a full disk) raises OSError and leaves no part of its frame
behind; the caller keeps that report in memory only. A `.done` write that fails is retried at the
next `consume`; until then a restart replays those reports again, which the master takes as
repeats (master/report_acks.py: no second change row or advance).
Resource handling: the last segment stays open for appends, the first one's `.done` for its
count; `close()` closes both. Not thread-safe: the agent calls it on its event loop only.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec

from relaysync._util.kept_aside import keep_aside
from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.protocol.messages import ENCODER, CommitReport

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 8 * 1024 * 1024  # a new segment past this: taken segments free their space
MAX_RETIRED_FDS = 8  # segments left since the last sync whose descriptors are kept for it
_HEADER = struct.Struct(">II")  # payload bytes, CRC-32 of the payload
_DONE = struct.Struct(">QI")  # frames taken, CRC-32 of that count (a torn write reads as 0)
_DECODER = msgspec.msgpack.Decoder(CommitReport)
_NAME = re.compile(r"[0-9a-f]{16}\.outbox")


class OutboxSync(NamedTuple):
    """What `sync_handles` gives: (fd, is the directory's) to sync and close, and the count of
    segments made to confirm with `dir_synced` once the directory's fsync succeeded."""

    handles: list[tuple[int, bool]]
    made: int


@dataclass
class _Segment:
    number: int
    path: Path
    frames: int  # whole frames, lost ones (skipped as unreadable) too
    size: int  # the end of the last of them
    done: int = 0  # of its first frames, taken by the master (its .done file)
    lost: set[int] = field(default_factory=set)  # frames past `done` skipped as unreadable
    bad: bool = False  # a frame was unreadable: kept as .bad once taken, not deleted

    def take(self, reports: int) -> int:
        """Count up to `reports` more frames as taken, and the lost ones among and after them;
        returns the reports counted."""
        taken = 0
        while taken < reports and self.done < self.frames:
            taken += self.done not in self.lost
            self.done += 1
        while self.done in self.lost:  # no report to wait for: taken with what precedes it
            self.done += 1
        return taken

    @property
    def pending(self) -> int:
        return self.frames - self.done - sum(1 for n in self.lost if n >= self.done)


class ReportOutbox:
    """Commit reports on disk, in order: `append` each, `consume` the first n once taken."""

    def __init__(self, directory: Path, node_id: str, *, segment_bytes: int | None = None) -> None:
        self.directory = directory / node_id[:16]
        self.segment_bytes = SEGMENT_BYTES if segment_bytes is None else segment_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the last segment's, open for appends
        self._done_fd: int | None = None  # the first segment's .done
        self._unsaved = False  # the first segment's count is ahead of its .done
        self._next = 0  # the next segment's number
        # For `sync_handles`: the descriptors of segments appends left since the last sync (a
        # report may span segments), and how many segments were made against how many of their
        # names a directory fsync is known to cover (`dir_synced`).
        self._retired: collections.deque[int] = collections.deque()
        self._made = self._dir_synced = 0

    @property
    def pending(self) -> int:
        """Reports appended and not consumed."""
        return sum(s.pending for s in self._segments)

    def open(self) -> list[CommitReport]:
        """Take up what a previous run left; returns its reports not taken yet, in order.

        Raises:
            OSError: the directory cannot be made or read.
        """
        _remove_other_identities(self.directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        out: list[CommitReport] = []
        for path in sorted(self.directory.glob("*.outbox"), key=lambda p: p.name):
            if not _NAME.fullmatch(path.name):
                logger.warning("report outbox: ignoring %s (not a segment name)", path)
                continue
            segment = _read(path, out)
            self._next = segment.number + 1
            if segment.pending:
                self._segments.append(segment)
            else:
                _remove(segment)
        for stale in self.directory.glob("*.done"):
            if not stale.with_suffix(".outbox").exists():
                stale.unlink()
        if out:
            logger.warning(
                "report outbox: %s commit reports of a previous run were not taken by the "
                "master; sending them first",
                len(out),
            )
        return out

    def append(self, report: CommitReport) -> None:
        """Add `report` at the end.

        Raises:
            OSError: the disk is full or failing; nothing of `report` is kept.
        """
        payload = ENCODER.encode(report)
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        segment, fd = self._tail(len(frame))
        try:
            _write_all(fd, frame, segment.size)
        except OSError:
            with contextlib.suppress(OSError):  # the disk is failing already: cut what we can
                os.ftruncate(fd, segment.size)
            raise
        segment.size += len(frame)
        segment.frames += 1

    def consume(self, frames: int) -> None:
        """The first `frames` reports not consumed yet are taken (or dropped): forget them.

        Raises:
            OSError: a `.done` could not be written or a segment removed; tried again next time.
        """
        segments = self._segments
        while frames > 0 and segments:
            head = segments[0]
            before = head.done
            frames -= head.take(frames)
            self._unsaved = self._unsaved or head.done > before
            if head.done < head.frames:
                break
            if len(segments) == 1 and head.size < self.segment_bytes:
                break  # the one appends go to: kept, its count saved
            self._drop_head()
        if self._unsaved and segments:
            self._save_done(segments[0])

    def sync_handles(self) -> OutboxSync:
        """Descriptors to make what was appended durable: the segments appends left since the
        last call (handed over), a duplicate of the last one's, and the directory's while a new
        segment's name is not known synced. The caller syncs and closes them off the event loop
        (`sync_and_close`), then confirms the directory (`dir_synced(made)`)."""
        handles: list[tuple[int, bool]] = [(fd, False) for fd in self._retired]
        self._retired.clear()
        try:
            if self._fd is not None:
                handles.append((os.dup(self._fd), False))
            if self._made > self._dir_synced:
                handles.append((os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC), True))
        except OSError:
            for fd, _ in handles:
                os.close(fd)
            raise
        return OutboxSync(handles, self._made)

    def dir_synced(self, made: int) -> None:
        """A directory fsync covered the names of the first `made` segments."""
        self._dir_synced = max(self._dir_synced, made)

    def close(self) -> None:
        """Close the files (nothing to flush: appends are written as they come)."""
        for fd in (self._fd, self._done_fd, *self._retired):
            if fd is not None:
                os.close(fd)
        self._fd = self._done_fd = None
        self._retired.clear()

    def _drop_head(self) -> None:
        """Delete the first segment: all of its reports are taken."""
        head = self._segments.pop(0)
        if self._done_fd is not None:
            os.close(self._done_fd)
            self._done_fd = None
        if not self._segments:
            self.close()
        _remove(head)
        self._unsaved = False

    def _save_done(self, segment: _Segment) -> None:
        if self._done_fd is None:
            done_path = segment.path.with_suffix(".done")
            self._done_fd = os.open(done_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        count = segment.done
        os.pwrite(self._done_fd, _DONE.pack(count, zlib.crc32(count.to_bytes(8, "big"))), 0)
        self._unsaved = False

    def _tail(self, size: int) -> tuple[_Segment, int]:
        """The segment to append `size` bytes to, and its descriptor: a new one when the last is
        full or was left by a previous run (its end may be torn)."""
        last = self._segments[-1] if self._segments else None
        fits = last is not None and (last.size == 0 or last.size + size <= self.segment_bytes)
        if last is not None and self._fd is not None and fits:
            return last, self._fd
        if self._fd is not None:  # kept for the next sync (a report may span segments)
            self._retired.append(self._fd)
            self._fd = None
            while len(self._retired) > MAX_RETIRED_FDS:  # no one syncs (fast): not for ever
                os.close(self._retired.popleft())
        number, self._next = self._next, self._next + 1
        path = self.directory / f"{number:016x}.outbox"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._made += 1
        segment = _Segment(number, path, 0, 0)
        self._segments.append(segment)
        return segment, self._fd


def _remove_other_identities(directory: Path) -> None:
    """Remove the outboxes of this data directory's former identities, with a warning."""
    parent = directory.parent
    if not parent.is_dir():
        return
    for other in parent.iterdir():
        if other != directory and other.is_dir():
            logger.warning(
                "report outbox: removing %s, left by a former identity of this agent (the "
                "master would refuse its reports as another node's)",
                other,
            )
            shutil.rmtree(other, ignore_errors=True)


def _read(path: Path, out: list[CommitReport]) -> _Segment:
    """Segment `path` as a previous run left it; its reports not taken yet go to `out`."""
    segment = _Segment(int(path.stem, 16), path, 0, 0, done=_saved_done(path))
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        report, end = _frame_at(data, offset)
        if report is None and end < len(data):  # a bad frame, not the last: skip it alone
            segment.bad = True
            if segment.frames >= segment.done:
                segment.lost.add(segment.frames)
        elif report is None:
            logger.warning(
                "report outbox: %s: unreadable frame at byte %s of %s (a torn last frame: the "
                "agent stopped while writing it); the rest of this segment is ignored",
                path,
                offset,
                len(data),
            )
            break
        elif segment.frames >= segment.done:
            out.append(report)
        segment.frames += 1
        offset = segment.size = end
    segment.done = min(segment.done, segment.frames)
    segment.take(0)  # lost frames first: taken already
    if segment.lost:
        logger.warning(
            "report outbox: %s: %s frames fail their CRC or cannot be decoded; their reports "
            "are lost (skipped; the file is kept as .bad)",
            path,
            len(segment.lost),
        )
    return segment


def _frame_at(data: bytes, offset: int) -> tuple[CommitReport | None, int]:
    """The report in the frame at `offset` and the frame's end; None if torn or bad."""
    start = offset + _HEADER.size
    if start > len(data):
        return None, len(data)
    length, crc = _HEADER.unpack_from(data, offset)
    end = start + length
    if not 0 < length <= MAX_MESSAGE_BYTES or end > len(data):
        return None, len(data)
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return None, end
    try:
        return _DECODER.decode(payload), end
    except msgspec.DecodeError:  # written by another release: not ours to send
        return None, end


def _saved_done(path: Path) -> int:
    """How many of segment `path`'s first frames were taken (0 if unknown: repeats, never loses)."""
    try:
        raw = path.with_suffix(".done").read_bytes()
    except FileNotFoundError:
        return 0
    if len(raw) != _DONE.size:
        return 0
    count, crc = _DONE.unpack(raw)
    return count if zlib.crc32(count.to_bytes(8, "big")) == crc else 0


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write `data` at `offset`, by position (a write cut short by a full disk is cut off)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _remove(segment: _Segment) -> None:
    if segment.bad:  # kept for the operator, out of the way of `open()`
        keep_aside(segment.path)
    else:
        segment.path.unlink(missing_ok=True)
    segment.path.with_suffix(".done").unlink(missing_ok=True)


def sync_and_close(sync: OutboxSync) -> None:
    """Make durable what `sync_handles` gave, closing each (in a worker thread: it waits on the
    disk).

    Raises:
        OSError: a sync failed (the disk); every handle is closed all the same.
    """
    try:
        for fd, is_dir in sync.handles:
            (os.fsync if is_dir else os.fdatasync)(fd)
    finally:
        for fd, _ in sync.handles:
            os.close(fd)
