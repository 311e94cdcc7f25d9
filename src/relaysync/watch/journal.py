"""The journal: a durable, segmented, append-only log of the changes of one (mapping, source).

Layout of the journal directory:

    journal.id                 random id; a new id means a fresh journal
    released                   highest seq every target has committed (the release watermark)
    boot                       "<boot id> open|closed fast|safe": how the last opener left it
    lease                      (fast journals) every seq up to this may have been handed out
    00000000000000000001.seg   segments, named by the first seq they hold (or will hold)

Each record is framed as `u32 length | u32 crc32(payload) | msgpack(JournalRecord)`
(_journal_frame.py).

Error handling: on open, a torn tail of the last segment (a short frame, or a bad frame that is
the last one) is truncated away and logged; a bad frame followed by a good one is corruption and
raises JournalCorrupt, as does any bad frame met later by `read()` in an older segment. A
`released` file that holds no seq (left torn by a crash) is read as 0 and logged: the retained
records are sent again rather than skipped. A `read()` from below what is retained (records
released meanwhile) raises JournalGap: the reader missed them and must catch up otherwise.

A journal written without fsync ("fast" durability) may lose its tail when the machine itself
crashes: the records come back with lower seqs than the targets have already acknowledged, and
the next changes would reuse seqs the targets skip as seen (and that the master's job log and
purge ordering key changes by). So a fast journal that was left open (not `close()`d) under
another boot id than the current one starts a new journal id on open, with nothing retained:
every target's watermark is void and it catches up by comparing trees. Its seqs go on above
every seq the lost tail may have handed out: a fast journal fsyncs a `lease` of LEASE_SEQS seqs
before it uses them (the file and its directory once per LEASE_SEQS records). A process killed
with -9 keeps the boot id (the page cache survives), so it keeps its journal.

State files (journal.id, boot, lease, and released in safe mode) are replaced durably: written
to a temp file, fsynced, renamed, and the directory fsynced. A fast journal writes `released`
without either fsync, on purpose: a lost one only means records are sent again.

Reads (`read`, `read_coalesced`, `covers`) are the `JournalReads` mixin, watch/_journal_reads.py.
The records of the last appends (up to TAIL_BYTES of frames) are also kept as written: a link
that follows the head reads them from memory, not back from the segment it was just written to
(decoding them again cost a 10,000-file first copy 0.05-0.07 CPU-s of the source's ~0.9).

Resource handling: the active segment stays open for appending until `close()`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import anyio

from relaysync.errors import JournalCorrupt
from relaysync.watch._journal_frame import _frame, _read_frame, _TornTail
from relaysync.watch._journal_reads import JournalReads
from relaysync.watch.changes import JournalRecord, PendingChange

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024  # segments are released whole; big enough to keep file counts low
LEASE_SEQS = 4096  # a fast journal reserves seqs durably this many at a time (see the module doc)
INDEX_EVERY_RECORDS = 64  # one (seq, offset) index point per this many records, to seek reads
# The frames of the records kept in memory for readers at the head (`_keep_tail`): about 1,500
# records of a short path, a few hundred KB of objects per journal, dropped as they are released.
TAIL_BYTES = 256 * 1024
_SUFFIX = ".seg"
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_segment(path: Path) -> BinaryIO:
    """A segment opened to append, unbuffered: each append is written by `Journal._write`
    itself, and none of it waits in a buffer after a failure."""
    return open(path, "ab", buffering=0)  # noqa: SIM115 - closed by the Journal


def _write_atomic(path: Path, text: str, *, fsync: bool) -> None:
    """Replace `path` with `text` atomically; with `fsync`, durably: the data before the rename,
    and the directory after it (the rename is a write of the directory, lost in a power cut
    until that is fsynced)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def current_boot_id() -> str:
    """The kernel's id of this boot ("" where /proc does not say)."""
    try:
        return _BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


class Journal(JournalReads):
    """The durable journal of one (mapping, source).

    Args:
        directory: where the segments live; created if missing.
        segment_bytes: start a new segment once the active one reaches this size.
        fsync: fsync every append (group commit); False only for tests and "fast" mode.
        boot_id: this boot's id (default: the kernel's); a fast journal left open under another
            one may have lost its tail and starts a new journal id (see the module doc).

    Raises:
        JournalCorrupt: a segment is damaged somewhere other than its torn tail.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        fsync: bool = True,
        boot_id: str | None = None,
    ) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._flushing = False
        self.commit_count = 0  # write+fsync batches so far, to observe group commit
        directory.mkdir(parents=True, exist_ok=True)
        self.journal_id = self._load_id()
        self._released = self._load_released()
        self._segments = sorted(int(p.name[: -len(_SUFFIX)]) for p in directory.glob(f"*{_SUFFIX}"))
        self._index: dict[int, tuple[list[int], list[int]]] = {}
        self._tail: list[JournalRecord] = []  # the last records appended, consecutive seqs
        self._tail_sizes: list[int] = []  # their frames' lengths
        self._tail_bytes = 0
        if not self._segments:
            self._segments = [self._released + 1]
            self._segment_path(self._segments[0]).touch()
            self._sync_dir()
        self._last_seq, self._size = self._recover(self._segments[-1])
        self._file: BinaryIO = _open_segment(self._segment_path(self._segments[-1]))
        self._lease = self._load_lease()
        self._boot_id = (current_boot_id() if boot_id is None else boot_id) or "-"
        self.previous_id: str | None = None  # the id this open replaced, if the tail may be lost
        if self._tail_may_be_lost():
            self._start_afresh()
        self._mark_boot("open")

    # --- opening ---

    def _tail_may_be_lost(self) -> bool:
        """Whether the last opener wrote without fsync and the machine restarted before it closed."""
        try:
            boot, state, mode = (self._dir / "boot").read_text().split()
        except (FileNotFoundError, ValueError):
            return False  # a new journal, or one from a release before this mark: nothing to tell
        return state == "open" and mode == "fast" and boot != self._boot_id

    def _start_afresh(self) -> None:
        """Release everything, go on above every seq ever handed out, and take a new id: no
        target's watermark of the old id applies."""
        old = self.journal_id
        self._last_seq = self._released = max(self._released, self._last_seq, self._lease)
        _write_atomic(self._dir / "released", str(self._released), fsync=True)
        self._file.close()
        for first in self._segments:
            self._index.pop(first, None)
            self._segment_path(first).unlink(missing_ok=True)
        self._segments = [self._last_seq + 1]
        self._file = _open_segment(self._segment_path(self._segments[0]))
        self._size = 0
        self._sync_dir(force=True)
        self.journal_id = uuid.uuid4().hex
        _write_atomic(self._dir / "journal.id", self.journal_id, fsync=True)
        self.previous_id = old
        logger.warning(
            "journal %s was written without fsync and the machine restarted before it was closed: "
            "its last records may be lost, so it continues as journal %s (was %s) from seq %s; "
            "targets catch up by comparing trees",
            self._dir,
            self.journal_id,
            old,
            self._last_seq + 1,
        )

    def _mark_boot(self, state: str) -> None:
        _write_atomic(
            self._dir / "boot",
            f"{self._boot_id} {state} {'safe' if self._fsync else 'fast'}\n",
            fsync=True,
        )

    def _load_id(self) -> str:
        path = self._dir / "journal.id"
        if path.exists():
            return path.read_text().strip()
        journal_id = uuid.uuid4().hex
        _write_atomic(path, journal_id, fsync=True)
        logger.info("created journal %s in %s", journal_id, self._dir)
        return journal_id

    def _load_lease(self) -> int:
        try:
            return int((self._dir / "lease").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _extend_lease(self, upto_seq: int) -> None:
        """Before a fast journal hands out seqs past its lease: reserve the next ones durably."""
        if self._fsync or upto_seq <= self._lease:
            return
        lease = upto_seq + LEASE_SEQS
        _write_atomic(self._dir / "lease", str(lease), fsync=True)
        self._lease = lease

    def _load_released(self) -> int:
        """The release watermark; 0 if the file is missing or unreadable.

        A crash can leave `released` empty, zero-filled or cut short where the filesystem does
        not order a rename after its data (and a fast journal writes it without fsync). 0 is
        the safe reading: every retained record is read again (sent twice, never skipped), and
        the next release writes it afresh. A larger value would skip records a target may lack.
        """
        try:
            text = (self._dir / "released").read_bytes().decode("ascii", "replace").strip()
        except FileNotFoundError:
            return 0
        if text.isdigit():
            return int(text)
        logger.warning(
            "journal %s: its released file holds %r, not a seq (torn by a crash?): "
            "reading it as 0, so the records it keeps are sent again",
            self._dir,
            text[:40],
        )
        return 0

    def _segment_path(self, first_seq: int) -> Path:
        return self._dir / f"{first_seq:020d}{_SUFFIX}"

    def _sync_dir(self, *, force: bool = False) -> None:
        if self._fsync or force:
            _fsync_dir(self._dir)

    def _recover(self, first_seq: int) -> tuple[int, int]:
        """Validate the last segment, truncate a torn tail; return (last seq, good size)."""
        path = self._segment_path(first_seq)
        seqs, offsets = self._index.setdefault(first_seq, ([], []))
        last, good = first_seq - 1, 0
        with open(path, "rb") as f:
            try:
                while (got := _read_frame(f, good, str(path))) is not None:
                    record, end = got
                    if record.seq != last + 1:
                        raise JournalCorrupt(str(path), good, f"seq {record.seq} after {last}")
                    if (record.seq - first_seq) % INDEX_EVERY_RECORDS == 0:
                        seqs.append(record.seq)
                        offsets.append(good)
                    last, good = record.seq, end
                    f.seek(good)
            except _TornTail as torn:
                logger.warning(
                    "journal %s: truncating torn tail at offset %s: %s",
                    path,
                    torn.offset,
                    torn.reason,
                )
                os.truncate(path, torn.offset)
        return last, good

    # --- state ---

    @property
    def last_seq(self) -> int:
        """The highest seq appended, 0 if the journal never held a record."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """The lowest retained seq; last_seq + 1 if nothing is retained."""
        with self._lock:
            return self._retained_after() + 1

    # --- appending ---

    def append(self, changes: Sequence[PendingChange]) -> list[JournalRecord]:
        """Append changes with consecutive seqs, durably (one write and one fsync per call).

        Returns:
            The journal records, in order.
        """
        if not changes:
            return []
        with self._lock:
            now = time.time_ns()
            records = [
                JournalRecord(
                    seq=self._last_seq + 1 + i,
                    op=c.op,
                    path=c.path,
                    new_path=c.new_path,
                    entry=c.entry,
                    base_hash=c.base_hash,
                    time_ns=now,
                )
                for i, c in enumerate(changes)
            ]
            if self._size >= self._segment_bytes:
                self._rotate()
            self._extend_lease(records[-1].seq)
            self._write(records)
            return records

    def _write(self, records: list[JournalRecord]) -> None:
        frames = [_frame(r) for r in records]
        fd = self._file.fileno()
        try:
            data = memoryview(b"".join(frames))
            while data:  # the segment is unbuffered (`_open_segment`): what is not written is not
                data = data[os.write(fd, data) :]
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            # Leave no partial frame behind: the next append would follow garbage. (A buffered
            # file's truncate flushed first, failed on the full disk, and kept the frames to
            # write them with the next append: a seq twice, a journal that would not reopen.)
            os.ftruncate(fd, self._size)
            raise
        self._add_index_points(records, frames)
        self._last_seq = records[-1].seq
        self._keep_tail(records, frames)
        self.commit_count += 1

    def _keep_tail(self, records: list[JournalRecord], frames: list[bytes]) -> None:
        """Keep the records just written for `read` (JournalReads._read_tail), the oldest dropped
        past TAIL_BYTES of frames."""
        sizes = [len(f) for f in frames]
        self._tail += records
        self._tail_sizes += sizes
        self._tail_bytes += sum(sizes)
        if self._tail_bytes > TAIL_BYTES:
            drop, over = 0, self._tail_bytes - TAIL_BYTES
            while over > 0:
                over -= self._tail_sizes[drop]
                drop += 1
            self._drop_tail(drop)

    def _drop_tail(self, count: int) -> None:
        self._tail_bytes -= sum(self._tail_sizes[:count])
        del self._tail[:count], self._tail_sizes[:count]

    def _add_index_points(self, records: list[JournalRecord], frames: list[bytes]) -> None:
        first = self._segments[-1]
        seqs, offsets = self._index.setdefault(first, ([], []))
        for record, frame in zip(records, frames, strict=True):
            if (record.seq - first) % INDEX_EVERY_RECORDS == 0:
                seqs.append(record.seq)
                offsets.append(self._size)
            self._size += len(frame)

    def _rotate(self) -> None:
        self._file.close()
        first = self._last_seq + 1
        self._segments.append(first)
        self._file = _open_segment(self._segment_path(first))
        self._size = 0
        self._sync_dir()

    async def append_async(self, changes: Sequence[PendingChange]) -> list[JournalRecord]:
        """Append from async code; concurrent callers share one write and one fsync.

        The first caller becomes the flusher and writes every batch queued meanwhile, shielded
        from cancellation so that no queued caller is left without an answer. A caller cancelled
        while waiting still gets its changes journaled.
        """
        waiter = _Waiter(list(changes))
        self._queue.append(waiter)
        if self._flushing:
            await waiter.done.wait()
        else:
            self._flushing = True
            try:
                with anyio.CancelScope(shield=True):
                    while self._queue:
                        batch, self._queue = self._queue, []
                        await self._flush(batch)
            finally:
                self._flushing = False
        if waiter.error is not None:
            raise waiter.error
        return waiter.records

    async def _flush(self, batch: list[_Waiter]) -> None:
        changes = [c for w in batch for c in w.changes]
        try:
            records = await anyio.to_thread.run_sync(self.append, changes)
        except Exception as exc:
            for w in batch:
                w.error = exc
                w.done.set()
            return
        start = 0
        for w in batch:
            w.records = records[start : start + len(w.changes)]
            start += len(w.changes)
            w.done.set()

    # --- the index of an older segment, built at its first read (watch/_journal_reads.py) ---

    def _build_index(self, first: int) -> None:
        seqs, offsets = self._index.setdefault(first, ([], []))
        path = self._segment_path(first)
        offset = 0
        with open(path, "rb") as f:
            while (got := self._read_checked(f, offset, path)) is not None:
                record, end = got
                if (record.seq - first) % INDEX_EVERY_RECORDS == 0:
                    seqs.append(record.seq)
                    offsets.append(offset)
                offset = end

    # --- releasing ---

    def release(self, upto_seq: int) -> None:
        """Mark every record up to `upto_seq` committed everywhere; delete segments wholly below it."""
        with self._lock:
            upto_seq = min(upto_seq, self._last_seq)
            if upto_seq <= self._released:
                return
            self._released = upto_seq
            _write_atomic(self._dir / "released", str(upto_seq), fsync=self._fsync)
            if self._tail:  # released records are read by no one
                self._drop_tail(min(max(upto_seq + 1 - self._tail[0].seq, 0), len(self._tail)))
            if self._size > 0 and self._last_seq <= upto_seq:
                self._rotate()
            while len(self._segments) > 1 and self._segments[1] - 1 <= upto_seq:
                first = self._segments.pop(0)
                self._index.pop(first, None)
                self._segment_path(first).unlink(missing_ok=True)
                logger.debug("journal %s: released segment %s", self._dir, first)

    def close(self) -> None:
        """Close the active segment, durably: a fast journal is fsynced once here, so that a
        machine crash after a clean stop loses nothing and needs no new id."""
        with self._lock:
            if self._file.closed:
                return
            if not self._fsync:
                self._file.flush()
                os.fsync(self._file.fileno())
                _write_atomic(self._dir / "released", str(self._released), fsync=True)
            self._file.close()
            self._mark_boot("closed")


class _Waiter:
    """One append_async caller waiting for the group commit that carries its changes."""

    def __init__(self, changes: list[PendingChange]) -> None:
        self.changes = changes
        self.done = anyio.Event()
        self.records: list[JournalRecord] = []
        self.error: Exception | None = None
