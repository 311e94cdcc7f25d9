"""Folds of new purge items into queued ones of the same (site, cache, URL, action).

A cache that is down keeps its items queued until it answers; every change to a URL meanwhile
would add one more row (500 rewrites of one page, 500 rows, each worked on by the same single
request once the cache is back). A new item is folded into a queued item of the same key that
has not been tried yet: that one's first try comes after the new change was committed, so it
refreshes what the change wrote. It keeps the older item's place in the queue (its id: oldest
first, purge/due.py), which is the same URL. An item that was tried (a retry waits) or is in
flight (not in the queue) takes no folds: its try may have begun before the new change.

The purger keeps the untried items in an index (`Untried`) beside its queue, changed with it
wherever an item is queued, taken for a try, put back for a retry or dropped: finding them by a
walk over the queue cost every intake round O(queue) on the event loop (65 ms at 100,000 items
queued behind a down cache, 1.7 s at 1,000,000), even for one change.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from relaysync.purge.jobs import PurgeItem, QueuedPurge


class Untried:
    """The queued items that have not been tried yet, each with how many queued rows it has (a
    queue reloaded after a restart, or written by two overlapping intakes, may hold one twice)."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[PurgeItem, int] = {}

    def __contains__(self, item: object) -> bool:
        return item in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, q: QueuedPurge) -> None:
        """`q` was put in the queue."""
        if q.attempts == 0:
            self._rows[q.item] = self._rows.get(q.item, 0) + 1

    def discard(self, q: QueuedPurge) -> None:
        """`q` left the queue (or is replaced there)."""
        if q.attempts == 0:
            rows = self._rows.get(q.item, 0) - 1
            if rows > 0:
                self._rows[q.item] = rows
            else:
                self._rows.pop(q.item, None)


def fold(
    items: Sequence[PurgeItem], untried: Container[PurgeItem]
) -> tuple[list[PurgeItem], list[PurgeItem]]:
    """Split `items` into those to queue (one per key) and those folded into an `untried` item
    of the queue (and that the caller must check again after it awaits)."""
    fresh: list[PurgeItem] = []
    folded: list[PurgeItem] = []
    seen: set[PurgeItem] = set()
    for item in items:
        if item in untried:
            folded.append(item)
        elif item not in seen:  # the same URL twice in one batch: one item does for both
            seen.add(item)
            fresh.append(item)
    return fresh, folded
