"""Small files' bytes as the source read them to hash, kept for its links to send.

A change is hashed when it is journaled (a scan, a close-write) and read again when a link
sends it: for a first copy of 10,000 files of 4 KiB, the second open/read/fstat/close is about
a sixth of the source agent's CPU. The bytes read for the hash are kept here, keyed by path and
hash, and a link sending that very version (the record's hash) takes them instead of opening
the file. The bytes are the journaled version by construction, so what is sent is exactly what
was journaled; a newer version of the path has its own record, and its own read.

Bounded: files up to `max_file_bytes`, `budget_bytes` in all, each entry charged its content
plus ENTRY_OVERHEAD_BYTES (nothing more is kept while full); an entry goes once every link of
the mapping took it (`readers`, asked when it is kept), after `max_age_s` (a link that is down,
a record skipped by a comparison, a read that journaled no write), or with its mapping.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from relaysync.constants import SMALL_FILE_BYTES

CONTENT_CACHE_BYTES = 48 * 1024 * 1024  # kept in all, at most: 12,000 files of 4 KiB
CONTENT_CACHE_AGE_S = 60.0  # an entry no link took by then goes (its link is down, say)
ENTRY_OVERHEAD_BYTES = 512  # what an entry costs besides its content (objects, key, dict slot)


Key = tuple[int, str]  # (mapping id, path)


@dataclass(frozen=True, slots=True)
class Kept:
    """One small file's content as read to hash, with the stat it was read under."""

    digest: bytes
    data: bytes
    mode: int  # permission bits
    mtime_ns: int


@dataclass(slots=True)
class _Slot:
    kept: Kept
    left: int  # links that have still to take it
    at: float  # when it was kept (monotonic)


class ContentCache:
    """The bytes of small files the source read to hash, for its links: one per agent, shared
    by its source mappings under one budget (thread-safe: kept by the scans' worker threads,
    taken by the links' reader threads), by (mapping id, path): see MappingContent."""

    def __init__(
        self,
        *,
        budget_bytes: int = CONTENT_CACHE_BYTES,
        max_file_bytes: int = SMALL_FILE_BYTES,
        max_age_s: float = CONTENT_CACHE_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_bytes, self.max_file_bytes = budget_bytes, max_file_bytes
        self._max_age_s, self._clock = max_age_s, clock
        self._slots: OrderedDict[Key, _Slot] = OrderedDict()  # oldest first
        # taken by some of their links, not all (the others are down, older, sending a delta):
        # the first to go when the cache is full, oldest first-take first
        self._partly_taken: OrderedDict[Key, None] = OrderedDict()
        self._by_mapping: dict[int, set[Key]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        """What the entries are charged: their content plus ENTRY_OVERHEAD_BYTES each."""
        return self._bytes

    def wants(self, size: int) -> bool:
        """Whether a file of `size` bytes may be kept (the caller skips the copy otherwise)."""
        return size <= self.max_file_bytes

    def keep(self, key: Key, kept: Kept, readers: int) -> None:
        """Keep `kept` under `key` for `readers` takes, replacing what was kept there before.
        While full, entries some link took go first; if none, the new one is not kept (the
        ones kept before are still to be sent, in journal order, before it)."""
        if readers <= 0 or len(kept.data) > self.max_file_bytes:
            return
        size = len(kept.data) + ENTRY_OVERHEAD_BYTES
        with self._lock:
            self._drop(key)
            self._expire()
            while self._bytes + size > self.budget_bytes and self._partly_taken:
                self._drop(next(iter(self._partly_taken)))
            if self._bytes + size > self.budget_bytes:
                return  # full: this one is read from disk when sent
            self._slots[key] = _Slot(kept, readers, self._clock())
            self._by_mapping.setdefault(key[0], set()).add(key)
            self._bytes += size

    def take(self, key: Key, digest: bytes) -> Kept | None:
        """The content kept under `key` if it is the version hashed `digest`, else None; the
        entry goes once taken by every reader."""
        with self._lock:
            self._expire()
            slot = self._slots.get(key)
            if slot is None or slot.kept.digest != digest:
                return None
            slot.left -= 1
            if slot.left <= 0:
                self._drop(key)
            else:
                self._partly_taken.setdefault(key)
            return slot.kept

    def drop(self, key: Key) -> None:
        """Drop what is kept under `key`, if anything: no link will take it."""
        with self._lock:
            self._drop(key)

    def expire(self) -> None:
        """Drop the entries older than max_age_s (also done at each keep and take)."""
        with self._lock:
            self._expire()

    def forget(self, mapping_id: int) -> None:
        """Drop the entries of a mapping that stopped."""
        with self._lock:
            for key in list(self._by_mapping.get(mapping_id, ())):
                self._drop(key)

    def _drop(self, key: Key) -> None:
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        self._bytes -= len(slot.kept.data) + ENTRY_OVERHEAD_BYTES
        self._partly_taken.pop(key, None)
        keys = self._by_mapping[key[0]]
        keys.discard(key)
        if not keys:
            del self._by_mapping[key[0]]

    def _expire(self) -> None:
        """Drop the entries older than max_age_s (the oldest come first)."""
        cutoff = self._clock() - self._max_age_s
        while self._slots:
            key, slot = next(iter(self._slots.items()))
            if slot.at > cutoff:
                return
            self._drop(key)


class MappingContent:
    """One source mapping's view of the agent's ContentCache, by path: what its scans keep
    (for as many takes as it has links, `readers`, asked at each keep) and its links take."""

    def __init__(self, cache: ContentCache, mapping_id: int, readers: Callable[[], int]) -> None:
        self._cache, self._id, self._readers = cache, mapping_id, readers

    def wants(self, size: int) -> bool:
        return self._cache.wants(size)

    def keep(self, path: str, kept: Kept) -> None:
        self._cache.keep((self._id, path), kept, self._readers())

    def take(self, path: str, digest: bytes) -> Kept | None:
        return self._cache.take((self._id, path), digest)

    def drop(self, path: str) -> None:
        """What a scan kept for a write that went as a rename (no link reads the file)."""
        self._cache.drop((self._id, path))

    def forget(self) -> None:
        self._cache.forget(self._id)

    def expire(self) -> None:
        self._cache.expire()
