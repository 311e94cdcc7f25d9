"""The report outbox's segments as a previous run left them: frames, taken counts, read back.

Moved out of agent/outbox.py (whose docstring gives the layout), which appends and consumes.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.protocol.messages import CommitReport

from ._report_memory import held_bytes

logger = logging.getLogger(__name__)

HEADER = struct.Struct(">II")  # payload bytes, CRC-32 of the payload
DONE = struct.Struct(">QI")  # frames taken, CRC-32 of that count (a torn write reads as 0)
DECODER = msgspec.msgpack.Decoder(CommitReport)


@dataclass
class Segment:
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


@dataclass
class Cursor:
    """Where the first report not read back yet is: its segment, byte offset and frame index."""

    number: int
    offset: int
    frame: int


@dataclass
class Replay:
    """What `open` gives back while it reads: the reports that fit `hold_bytes` (estimated as
    held in memory; the first always), then the count of those left unread from `cursor`."""

    hold_bytes: int | None
    out: list[CommitReport] = field(default_factory=list)
    held: int = 0
    cursor: Cursor | None = None
    unread: int = 0

    def add(self, report: CommitReport, encoded_bytes: int, at: Cursor) -> None:
        if self.cursor is None:
            cost = held_bytes(report, encoded_bytes)
            if self.hold_bytes is None or not self.out or self.held + cost <= self.hold_bytes:
                self.out.append(report)
                self.held += cost
                return
            self.cursor = at
        self.unread += 1


def read_segment(path: Path, replay: Replay) -> Segment:
    """Segment `path` as a previous run left it; its reports not taken yet go to `replay`."""
    segment = Segment(int(path.stem, 16), path, 0, 0, done=saved_done(path))
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        report, end = frame_at(data, offset)
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
            at = Cursor(segment.number, offset, segment.frames)
            replay.add(report, end - offset - HEADER.size, at)
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


def frame_at(data: bytes, offset: int) -> tuple[CommitReport | None, int]:
    """The report in the frame at `offset` and the frame's end; None if torn or bad."""
    start = offset + HEADER.size
    if start > len(data):
        return None, len(data)
    length, crc = HEADER.unpack_from(data, offset)
    end = start + length
    if not 0 < length <= MAX_MESSAGE_BYTES or end > len(data):
        return None, len(data)
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return None, end
    try:
        return DECODER.decode(payload), end
    except msgspec.DecodeError:  # written by another release: not ours to send
        return None, end


def saved_done(path: Path) -> int:
    """How many of segment `path`'s first frames were taken (0 if unknown: repeats, never loses)."""
    try:
        raw = path.with_suffix(".done").read_bytes()
    except FileNotFoundError:
        return 0
    if len(raw) != DONE.size:
        return 0
    count, crc = DONE.unpack(raw)
    return count if zlib.crc32(count.to_bytes(8, "big")) == crc else 0
