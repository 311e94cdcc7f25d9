"""A relay's spool: the change stream it received for one mapping, kept until its children have it.

A relay appends every message of its parent's stream here as it arrives (before applying it
locally), and its links to its children read the spool behind it: so a child receives the
first chunks of a large file while the relay is still receiving the rest (streaming), and the
relay needs no copy of the file in its tree to forward it.

Layout: segment files `<n>.spool` of length-prefixed msgpack frames, in order. Positions are
global byte offsets across segments (they only grow). The spool covers every change with a
sequence number above `base`: a manifest comparison the parent ran with us (catch-up work with
seq 0) is not spooled; it resets the spool, and `base` becomes the checkpoint that closes it: a
child behind it, or at it (it may have got there before the comparison's work), gets a
comparison with our tree (`covers`).

Error handling: a torn tail (the relay was killed mid-write) is cut back to the last
checkpoint when the spool is opened; a write that fails (the disk full) is cut back to the
recorded end at once and raises TransientFailure (DISK_FULL or IO_ERROR), which the relay
answers its parent with, as a target does. When the parent's stream breaks mid-batch, the tail after
the last checkpoint is cut too and `generation` changes, so readers that had gone past it
restart their session (their partial file is discarded; the parent resends it).
Resource handling: one append handle; readers open segments per read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from relaysync.errors import ProtocolError, SpoolReset
from relaysync.protocol.framing import decode_payload, encode_frame
from relaysync.protocol.messages import AnyMessage, Checkpoint, DigestRequest
from relaysync.transfer._failures import spool_failure

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024  # a new segment starts at the first checkpoint past this size
_LEN = 4


@dataclass
class _Segment:
    path: Path
    start: int  # global position of its first byte
    size: int
    max_seq: int = 0


def _frames(f: BinaryIO) -> Iterator[tuple[AnyMessage, int]]:
    """Yield each whole, valid frame of a segment and the offset just after it; stop at a torn one."""
    offset = 0
    while len(header := f.read(_LEN)) == _LEN:
        length = int.from_bytes(header, "big")
        payload = f.read(length)
        if len(payload) != length:
            return
        try:
            message = decode_payload(payload)
        except ProtocolError:  # a torn frame: the tail from here is dropped
            return
        offset += _LEN + length
        yield message, offset


def _seq_of(message: AnyMessage) -> int:
    return int(getattr(message, "seq", 0))


class Spool:
    """The relay spool of one mapping (thread-safe: appends and reads run in worker threads)."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._state_path = directory / "spool.json"
        state = self._load_state()
        self.journal_id = str(state.get("journal_id", ""))
        base = state.get("base")
        self.base: int | None = (
            base if isinstance(base, int) else None
        )  # None: nothing until a checkpoint
        # `base` closes a comparison whose work the spool does not hold (see `covers`)
        self.repaired = state.get("repaired") is True
        self.head = 0  # the last checkpoint appended
        self.generation = 0  # changes when a reader must start again (a reset or a cut)
        self.resets = 0  # changes when the spool restarts at a new base (a reader compares)
        self._segments: list[_Segment] = []
        self._checkpoint_end = 0  # global position just after the last checkpoint frame
        # The parent asked for our listings (a manifest comparison runs) since the last checkpoint
        self._comparing = False
        self._open_segments()

    # --- state ---

    def _load_state(self) -> dict[str, object]:
        try:
            return dict(json.loads(self._state_path.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        state = {"journal_id": self.journal_id, "base": self.base, "repaired": self.repaired}
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self._state_path)

    def _open_segments(self) -> None:
        """Index the segments on disk and cut a torn or unfinished tail back to the last checkpoint.

        Frames are read one at a time, so opening a spool that holds a large file costs one
        frame of memory, not the segment.
        """
        paths = sorted(self.directory.glob("*.spool"), key=lambda p: int(p.stem))
        if not paths:
            return
        self._checkpoint_end = int(paths[0].stem)  # a segment always starts after a checkpoint
        for path in paths:
            segment = _Segment(path=path, start=int(path.stem), size=0)
            with open(path, "rb") as f:
                for message, offset in _frames(f):
                    segment.max_seq = max(segment.max_seq, _seq_of(message))
                    if isinstance(message, Checkpoint) and not message.again:
                        self.head = max(self.head, message.seq)
                        self._checkpoint_end = segment.start + offset
                    segment.size = offset
            self._segments.append(segment)
        self._truncate(self._checkpoint_end)
        if self.base is not None and self.head < self.base:
            self.head = self.base

    def _truncate(self, position: int) -> None:
        """Drop everything at and after global `position` (in the lock, or before any reader)."""
        kept: list[_Segment] = []
        for segment in self._segments:
            if segment.start >= position and segment is not self._segments[0]:
                segment.path.unlink(missing_ok=True)
                continue
            if segment.start + segment.size > position:
                with open(segment.path, "r+b") as f:
                    f.truncate(position - segment.start)
                segment.size = position - segment.start
            kept.append(segment)
        self._segments = kept

    # --- writing (the parent's session) ---

    def begin(self, journal_id: str, watermark: int) -> None:
        """A session from the parent starts; it streams every change above our `watermark`.

        A new source journal voids what was spooled. A spool that ends before our watermark
        (cut, or new) restarts there: what lies between was committed here without being
        spooled, and children behind it get a comparison with us instead.
        """
        with self._lock:
            self._comparing = False
            if journal_id != self.journal_id or self.base is None or self.head < watermark:
                # A comparison of the same journal cut before its closing checkpoint (a broken
                # session, a restart) left no base: its work is in our tree, not in the spool.
                cut_comparison = journal_id == self.journal_id and self.base is None
                self._reset_locked()
                self.journal_id = journal_id
                self.repaired = cut_comparison
                self.base = self.head = watermark
                self._save_state()

    def _reset_locked(self) -> None:
        end = self.end
        for segment in self._segments:
            segment.path.unlink(missing_ok=True)
        self._segments = []
        self._checkpoint_end = end
        self.base = None
        self.generation += 1
        self.resets += 1

    def append(self, messages: Sequence[AnyMessage]) -> None:
        """Spool a batch of the parent's stream.

        Catch-up work of a manifest comparison (seq 0) is not spooled: it repaired this relay's
        tree, and the children may lack the same things, so it resets the spool; children
        behind the checkpoint that closes the comparison get their own comparison with us. So
        does a comparison that found nothing to send but closes past what the spool saw: our
        tree holds changes the spool never did (committed in a session before this relay role,
        whose checkpoint never came), and a child must not take that checkpoint as covering
        them (found under stress: a child acknowledged a file it never got).

        Raises:
            TransientFailure: the spool could not be written (DISK_FULL or IO_ERROR); what the
                batch wrote after the last checkpoint is left for `cut_unfinished`.
        """
        with self._lock:
            frames: list[bytes] = []
            max_seq = 0
            for message in messages:
                if isinstance(message, DigestRequest):
                    self._comparing = True
                    continue
                seq = _seq_of(message)
                if isinstance(message, Checkpoint) and message.again:
                    # It opens files sent again (relay_retried.py): no batch ends here, so a
                    # stream broken before their closing Checkpoint is cut back before it.
                    if self.base is not None:
                        frames.append(encode_frame(message))
                    continue
                if isinstance(message, Checkpoint):
                    comparing, self._comparing = self._comparing, False
                    if self.base is not None and comparing and seq > self.head:
                        self._write_locked(frames, max_seq)
                        frames, max_seq = [], 0
                        self._reset_locked()
                    if self.base is None:  # the checkpoint closing a comparison: we cover after it
                        self.base = self.head = seq
                        self.repaired = True
                        self._checkpoint_end = self.end
                        self._save_state()
                        continue
                    self.head = max(self.head, seq)
                elif seq == 0:
                    if self.base is not None:
                        self._write_locked(frames, max_seq)
                        frames, max_seq = [], 0
                        self._reset_locked()
                        self._save_state()
                    continue
                elif self.base is None:
                    continue
                frames.append(encode_frame(message))
                max_seq = max(max_seq, seq)
                if isinstance(message, Checkpoint):
                    self._write_locked(frames, max_seq)
                    frames, max_seq = [], 0
                    self._checkpoint_end = self.end
            self._write_locked(frames, max_seq)

    def _write_locked(self, frames: list[bytes], max_seq: int) -> None:
        if not frames:
            return
        segment = self._segments[-1] if self._segments else None
        if segment is None or (
            segment.size >= self.segment_bytes and self._checkpoint_end == self.end
        ):
            start = self.end
            segment = _Segment(path=self.directory / f"{start}.spool", start=start, size=0)
            self._segments.append(segment)
        data = b"".join(frames)
        try:
            with open(segment.path, "ab") as f:
                f.write(data)
        except OSError as exc:
            # Part of `data` may be on disk past the recorded end (ENOSPC mid-write): cut it, or
            # the parent's resend lands after it and no child can decode the segment again.
            self._cut_strays(segment)
            raise spool_failure(max_seq, self.directory, exc) from exc
        segment.size += len(data)
        segment.max_seq = max(segment.max_seq, max_seq)

    def _cut_strays(self, segment: _Segment) -> None:
        """Truncate a segment's file to its recorded size (bytes of a failed write past it)."""
        try:
            with open(segment.path, "r+b") as f:
                if f.seek(0, os.SEEK_END) > segment.size:
                    f.truncate(segment.size)
        except FileNotFoundError:
            pass
        except OSError:  # the next write, cut_unfinished or a reopen tries again
            logger.warning("spool %s: cannot cut a failed write", segment.path, exc_info=True)

    def cut_unfinished(self) -> None:
        """The parent's session ended: drop the tail after the last checkpoint (it is resent)."""
        with self._lock:
            if self._segments:
                self._cut_strays(self._segments[-1])
            if self.end > self._checkpoint_end:
                self._truncate(self._checkpoint_end)
                self.generation += 1

    # --- reading (the children's links) ---

    @property
    def end(self) -> int:
        if not self._segments:
            return self._checkpoint_end
        last = self._segments[-1]
        return last.start + last.size

    @property
    def settled(self) -> bool:
        """Whether the spool ends with a Checkpoint (no batch of our parent's half spooled)."""
        with self._lock:
            return self.end == self._checkpoint_end

    @property
    def start(self) -> int:
        return self._segments[0].start if self._segments else self._checkpoint_end

    def covers(self, watermark: int) -> bool:
        """Can a child at `watermark` be served from the spool alone? At `base` or past it;
        only past it where `base` closes a comparison our parent ran with us (`repaired`): our
        tree got its work there without a seq, and a child caught up to that seq before it came
        would never get it from the spool."""
        with self._lock:  # `append` and `begin` set the pair in worker threads
            base, repaired = self.base, self.repaired
        return base is not None and (base < watermark or (base == watermark and not repaired))

    def read(self, position: int, generation: int, max_bytes: int) -> tuple[list[AnyMessage], int]:
        """Return messages from `position` (at most about max_bytes) and the next position.

        Raises:
            SpoolReset: the spool was cut or restarted since the reader's `generation`.
        """
        with self._lock:
            if generation != self.generation or position < self.start:
                raise SpoolReset("its parent's stream broke mid-file, or a comparison reset it")
            segment = next(
                (s for s in self._segments if s.start <= position < s.start + s.size), None
            )
            if segment is None:
                return [], position
            limit = min(segment.size - (position - segment.start), max(max_bytes, 1 << 20))
            with open(segment.path, "rb") as f:
                f.seek(position - segment.start)
                data = f.read(limit)
        messages: list[AnyMessage] = []
        offset = 0
        while offset + _LEN <= len(data):
            length = int.from_bytes(data[offset : offset + _LEN], "big")
            if offset + _LEN + length > len(data):
                if not messages:  # one frame larger than the read: read it whole
                    return self.read(position, generation, _LEN + length)
                break
            messages.append(decode_payload(data[offset + _LEN : offset + _LEN + length]))
            offset += _LEN + length
        return messages, position + offset

    def release(self, upto: int) -> None:
        """Every child has committed up to `upto`: drop whole segments below it."""
        with self._lock:
            dropped = 0
            while len(self._segments) > 1 and self._segments[0].max_seq <= upto:
                segment = self._segments.pop(0)
                segment.path.unlink(missing_ok=True)
                dropped = max(dropped, segment.max_seq)
            if dropped and self.base is not None and dropped > self.base:
                self.base = dropped  # what was dropped is no longer covered: a new child compares
                self.repaired = False  # every child is past the comparison's point by now
                self._save_state()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "segments": len(self._segments),
                "bytes": self.end - self.start,
                "head": self.head,
                "base": -1 if self.base is None else self.base,
            }
