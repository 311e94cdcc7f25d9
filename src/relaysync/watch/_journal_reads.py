"""Reading a journal: its retained range, and the records after a seq, sought by its index.

`JournalReads` is mixed into `Journal` (watch/journal.py), which opens, appends, indexes and
releases; every read takes the journal's lock. A segment is sought from its nearest (seq, offset)
index point; a bad frame met in it raises JournalCorrupt. Records still in the journal's
in-memory tail (the last appended) are returned from it, not read back. Moved out of watch/journal.py.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from relaysync.errors import JournalCorrupt, JournalGap
from relaysync.watch._coalesce_journal import coalesce_records
from relaysync.watch._journal_frame import _read_frame, _TornTail
from relaysync.watch.changes import JournalRecord


class JournalReads:
    """The reads of a `Journal` (a mixin: `Journal.__init__` sets its state)."""

    _dir: Path
    _lock: threading.Lock
    _released: int  # the release watermark
    _last_seq: int  # the highest seq appended
    _segments: list[int]  # the first seq of each segment, ascending
    _index: dict[int, tuple[list[int], list[int]]]  # segment -> (seqs, offsets) to seek from
    _tail: list[JournalRecord]  # the last records appended, as written (Journal._keep_tail)

    if TYPE_CHECKING:  # the Journal's

        def _segment_path(self, first_seq: int) -> Path: ...

        def _build_index(self, first: int) -> None: ...

    def covers(self, after_seq: int) -> bool:
        """Whether every record after `after_seq` is retained (and `after_seq` was handed out)."""
        with self._lock:
            return self._retained_after() <= after_seq <= self._last_seq

    def _retained_after(self) -> int:
        """Every record after this seq is retained (hold the lock)."""
        return min(max(self._released, self._segments[0] - 1), self._last_seq)

    def read(
        self, after_seq: int, limit: int = 1000, *, skip_released: bool = False
    ) -> list[JournalRecord]:
        """Return up to `limit` retained records with seq > after_seq, ascending.

        A reader below what is retained missed records released meanwhile (a target reopened
        lower as the release ran) and hears of it. `skip_released`: from the first retained one.

        Raises:
            JournalGap: records after `after_seq` were released (unless `skip_released`).
            JournalCorrupt: a damaged frame was met.
        """
        with self._lock:
            retained_after = self._retained_after()
            if after_seq < retained_after and not skip_released:
                raise JournalGap(str(self._dir), after_seq, retained_after)
            after_seq = max(after_seq, retained_after)
            tail = self._tail
            if tail and after_seq >= tail[0].seq - 1:  # at the head: the records as written
                start = after_seq + 1 - tail[0].seq
                return tail[start : start + limit]
            out: list[JournalRecord] = []
            pos = max(bisect.bisect_right(self._segments, after_seq + 1) - 1, 0)
            for first in self._segments[pos:]:
                out.extend(self._read_segment(first, after_seq, limit - len(out)))
                if len(out) >= limit:
                    break
            return out

    def _read_segment(self, first: int, after_seq: int, limit: int) -> Iterator[JournalRecord]:
        path = self._segment_path(first)
        if first not in self._index:
            self._build_index(first)
        seqs, offsets = self._index[first]
        i = bisect.bisect_right(seqs, after_seq + 1) - 1
        offset = offsets[i] if i >= 0 else 0
        count = 0
        with open(path, "rb") as f:
            f.seek(offset)
            while count < limit and (got := self._read_checked(f, offset, path)) is not None:
                record, offset = got
                if record.seq > after_seq:
                    count += 1
                    yield record

    @staticmethod
    def _read_checked(f: BinaryIO, offset: int, path: Path) -> tuple[JournalRecord, int] | None:
        try:
            got = _read_frame(f, offset, str(path))
        except _TornTail as torn:
            raise JournalCorrupt(str(path), torn.offset, torn.reason) from None
        if got is not None:
            f.seek(got[1])
        return got

    def read_coalesced(self, after_seq: int, limit: int = 1000) -> list[JournalRecord]:
        """Like read(), but drop writes superseded within the range read.

        A "write" record is skipped when a later "write" or "delete" of the same path is in the
        range read and no "rename" touching that path (the path itself, an ancestor or a
        descendant, as source or destination) comes in between; replaying the result gives the
        same final tree as replaying every record. The last record of the range is always
        kept, so callers can advance to the last seq returned.
        """
        return coalesce_records(self.read(after_seq, limit))
