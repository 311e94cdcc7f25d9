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
a segment is deleted once all of its frames are. `size_bytes` is what the segments weigh, which
the queue bounds (agent/report_queue.py `_fit_disk`: the oldest reports go, passed unread with
`skip_unread` when on disk only).

Reading back: the queue holds in memory only what fits its bound in bytes (agent/report_queue.py);
the reports past it are appended not `held`, and read back in order from a cursor on the first of
them (`peek_unread`, `advance`), and `open(hold_bytes)` returns only what fits, leaving the rest
`unread` the same way, found by their headers alone (decoding them all made a restart after a
long outage slow: `read_segment`). A frame found unreadable there is skipped alone, as at `open`.

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
import zlib
from pathlib import Path
from typing import NamedTuple

import msgspec

from relaysync._util.kept_aside import keep_aside
from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.protocol.messages import ENCODER, CommitReport

from ._lost_reports import HEAD_DECODER, ReportHead
from ._outbox_segments import DECODER, DONE, HEADER, Cursor, Replay, Segment, read_segment

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 8 * 1024 * 1024  # a new segment past this: taken segments free their space
MAX_RETIRED_FDS = 8  # segments left since the last sync whose descriptors are kept for it
_NAME = re.compile(r"[0-9a-f]{16}\.outbox")


class OutboxSync(NamedTuple):
    """What `sync_handles` gives: (fd, is the directory's) to sync and close, and the count of
    segments made to confirm with `dir_synced` once the directory's fsync succeeded."""

    handles: list[tuple[int, bool]]
    made: int


class ReportOutbox:
    """Commit reports on disk, in order: `append` each, `consume` the first n once taken."""

    def __init__(self, directory: Path, node_id: str, *, segment_bytes: int | None = None) -> None:
        self.directory = directory / node_id[:16]
        self.segment_bytes = SEGMENT_BYTES if segment_bytes is None else segment_bytes
        self._segments: list[Segment] = []
        self._fd: int | None = None  # the last segment's, open for appends
        self._done_fd: int | None = None  # the first segment's .done
        self._unsaved = False  # the first segment's count is ahead of its .done
        self._next = 0  # the next segment's number
        # For `sync_handles`: the descriptors of segments appends left since the last sync (a
        # report may span segments), and how many segments were made against how many of their
        # names a directory fsync is known to cover (`dir_synced`).
        self._retired: collections.deque[int] = collections.deque()
        self._made = self._dir_synced = 0
        # Reports on disk only (`unread`), after every one the caller holds: read back in order
        # from `_cursor` with `peek_unread` and `advance`, on `_reader` (segment number, fd).
        self.unread = 0
        self._cursor: Cursor | None = None
        # the peeked frame's end (None: its header is unreadable) and whether it is lost
        self._peeked: tuple[int | None, bool] = (None, True)
        self._reader: tuple[int, int] | None = None
        self.size_bytes = 0  # of the segments on disk: what the queue's bound in bytes counts

    @property
    def pending(self) -> int:
        """Reports appended and not consumed."""
        return sum(s.pending for s in self._segments)

    @property
    def head_pending(self) -> int:
        """Reports of the first segment not consumed: consuming as many deletes it (unless it
        is the one appends go to)."""
        return self._segments[0].pending if self._segments else 0

    def open(self, hold_bytes: int | None = None) -> list[CommitReport]:
        """Take up what a previous run left; returns its first reports not taken yet, in order,
        as many as fit `hold_bytes` in memory (estimated; at least one; None: all of them). The
        others stay on disk (`unread`), read back with `peek_unread`.

        Raises:
            OSError: the directory cannot be made or read.
        """
        _remove_other_identities(self.directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        replay = Replay(hold_bytes)
        for path in sorted(self.directory.glob("*.outbox"), key=lambda p: p.name):
            if not _NAME.fullmatch(path.name):
                logger.warning("report outbox: ignoring %s (not a segment name)", path)
                continue
            segment = read_segment(path, replay)
            self._next = segment.number + 1
            if segment.pending:
                self._segments.append(segment)
                self.size_bytes += segment.size
            else:
                _remove(segment)
        for stale in self.directory.glob("*.done"):
            if not stale.with_suffix(".outbox").exists():
                stale.unlink()
        self.unread, self._cursor = replay.unread, replay.cursor
        if replay.out:
            logger.warning(
                "report outbox: %s commit reports of a previous run were not taken by the "
                "master; sending them first (%s of them read back from disk as they go)",
                len(replay.out) + replay.unread,
                replay.unread,
            )
        return replay.out

    def append(self, report: CommitReport) -> None:
        """Add `report` at the end (held by the caller).

        Raises:
            OSError: the disk is full or failing; nothing of `report` is kept.
        """
        self.append_encoded(ENCODER.encode(report))

    def append_encoded(self, payload: bytes, *, held: bool = True) -> None:
        """Add a report, encoded, at the end; not `held`: the caller does not keep it in memory,
        it is read back with `peek_unread`, after the others not read yet (a held report must
        come after all of them: the caller holds none while some are unread).

        Raises:
            OSError: the disk is full or failing; nothing of the report is kept.
        """
        frame = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        segment, fd = self._tail(len(frame))
        try:
            _write_all(fd, frame, segment.size)
        except OSError:
            with contextlib.suppress(OSError):  # the disk is failing already: cut what we can
                os.ftruncate(fd, segment.size)
            raise
        if not held:
            if not self.unread:
                self._cursor = Cursor(segment.number, segment.size, segment.frames)
            self.unread += 1
        segment.size += len(frame)
        segment.frames += 1
        self.size_bytes += len(frame)

    def peek_unread(self) -> tuple[CommitReport | None, int] | None:
        """The first report not read back yet and its encoded bytes, still unread (`advance`
        moves past it); None if there is none. The report is None when its frame cannot be read
        (a flipped bit since it was written): lost, with a warning.

        Raises:
            OSError: its segment cannot be read.
        """
        if not self.unread or self._cursor is None:
            return None
        cursor, segment = self._settled(self._cursor)
        fd = self._read_fd(segment)
        header = os.pread(fd, HEADER.size, cursor.offset)
        length, crc = HEADER.unpack(header) if len(header) == HEADER.size else (0, 0)
        end = cursor.offset + HEADER.size + length
        whole = 0 < length <= MAX_MESSAGE_BYTES and end <= segment.size
        self._peeked = (end if whole else None, True)
        payload = os.pread(fd, length, cursor.offset + HEADER.size) if whole else b""
        if whole and zlib.crc32(payload) == crc:
            with contextlib.suppress(msgspec.DecodeError):
                report = DECODER.decode(payload)
                self._peeked = (end, False)
                return report, length
        logger.warning(
            "report outbox: %s: unreadable frame at byte %s (damaged on disk since it was "
            "written); its report is lost (the file is kept as .bad)",
            segment.path,
            cursor.offset,
        )
        return None, length

    def skip_unread(self) -> tuple[int, ReportHead | None]:
        """Pass the first report not read back yet, decoding its head only (it is dropped);
        returns the frames passed, 1 or (its header unreadable) the rest of its segment's, and
        the head (None: the frames are lost, or the payload does not decode).

        Raises:
            OSError: its segment cannot be read.
        """
        assert self.unread and self._cursor is not None, "skip_unread() with none unread"
        cursor, segment = self._settled(self._cursor)
        fd = self._read_fd(segment)
        header = os.pread(fd, HEADER.size, cursor.offset)
        length = HEADER.unpack(header)[0] if len(header) == HEADER.size else 0
        end = cursor.offset + HEADER.size + length
        whole = 0 < length <= MAX_MESSAGE_BYTES and end <= segment.size
        self._peeked = (end, False) if whole else (None, True)
        head = None
        if whole:
            with contextlib.suppress(msgspec.DecodeError):
                head = HEAD_DECODER.decode(os.pread(fd, length, cursor.offset + HEADER.size))
        return self.advance(), head

    def advance(self) -> int:
        """Move past the report `peek_unread` gave; returns how many reports that passes: 1, or
        the rest of its segment's when the frame's header was unreadable (they are lost)."""
        assert self._cursor is not None, "advance() without peek_unread()"
        cursor, segment = self._settled(self._cursor)
        end, lost = self._peeked
        frames = range(cursor.frame, cursor.frame + 1 if end is not None else segment.frames)
        if lost:  # taken along with the reports around them, as if found by `open`
            segment.lost.update(frames)
            segment.bad = True
        self.unread -= len(frames)
        cursor.offset, cursor.frame = (segment.size if end is None else end), frames.stop
        if not self.unread:
            self._cursor = None
        return len(frames)

    def _settled(self, cursor: Cursor) -> tuple[Cursor, Segment]:
        """`cursor` moved to the next frame to read (past segment ends and frames `open` found
        lost), and its segment."""
        while True:
            segment = next(s for s in self._segments if s.number >= cursor.number)
            if segment.number != cursor.number:
                cursor.number, cursor.offset, cursor.frame = segment.number, 0, 0
            if cursor.frame >= segment.frames or cursor.offset >= segment.size:
                cursor.number, cursor.offset, cursor.frame = cursor.number + 1, 0, 0
            elif cursor.frame in segment.lost:  # its header was whole: `_read` checked it
                header = os.pread(self._read_fd(segment), HEADER.size, cursor.offset)
                cursor.offset += HEADER.size + HEADER.unpack(header)[0]
                cursor.frame += 1
            else:
                return cursor, segment

    def _read_fd(self, segment: Segment) -> int:
        """A descriptor to read `segment` by, kept while reading it."""
        if self._reader is not None and self._reader[0] == segment.number:
            return self._reader[1]
        self._close_reader()
        fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        self._reader = (segment.number, fd)
        return fd

    def _close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader[1])
            self._reader = None

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
        self._close_reader()
        for fd in (self._fd, self._done_fd, *self._retired):
            if fd is not None:
                os.close(fd)
        self._fd = self._done_fd = None
        self._retired.clear()

    def _drop_head(self) -> None:
        """Delete the first segment: all of its reports are taken."""
        head = self._segments.pop(0)
        self.size_bytes -= head.size
        if self._reader is not None and self._reader[0] == head.number:
            self._close_reader()
        if self._done_fd is not None:
            os.close(self._done_fd)
            self._done_fd = None
        if not self._segments:
            self.close()
        _remove(head)
        self._unsaved = False

    def _save_done(self, segment: Segment) -> None:
        if self._done_fd is None:
            done_path = segment.path.with_suffix(".done")
            self._done_fd = os.open(done_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        count = segment.done
        os.pwrite(self._done_fd, DONE.pack(count, zlib.crc32(count.to_bytes(8, "big"))), 0)
        self._unsaved = False

    def _tail(self, size: int) -> tuple[Segment, int]:
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
        segment = Segment(number, path, 0, 0)
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


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write `data` at `offset`, by position (a write cut short by a full disk is cut off)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _remove(segment: Segment) -> None:
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
