"""Folds of new purge items into queued ones of the same (site, cache, URL, action).

A cache that is down keeps its items queued until it answers; every change to a URL meanwhile
would add one more row (500 rewrites of one page, 500 rows, each worked on by the same single
request once the cache is back). A new item is folded into a queued item of the same key that
has not been tried yet: that one's first try comes after the new change was committed, so it
refreshes what the change wrote. It keeps the older item's place in the queue (its id: oldest
first, purge/due.py), which is the same URL. An item that was tried (a retry waits) or is in
flight (not in the queue) takes no folds: its try may have begun before the new change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from relaysync.purge.jobs import PurgeItem, QueuedPurge


def waiting(queue: Mapping[int, QueuedPurge]) -> set[PurgeItem]:
    """The items of `queue` that have not been tried yet."""
    return {q.item for q in queue.values() if q.attempts == 0}


def fold(
    items: Sequence[PurgeItem], queue: Mapping[int, QueuedPurge]
) -> tuple[list[PurgeItem], list[PurgeItem]]:
    """Split `items` into those to queue (one per key) and those folded into a waiting item of
    `queue` (and that the caller must check again after it awaits)."""
    there = waiting(queue)
    fresh: list[PurgeItem] = []
    folded: list[PurgeItem] = []
    seen: set[PurgeItem] = set()
    for item in items:
        if item in there:
            folded.append(item)
        elif item not in seen:  # the same URL twice in one batch: one item does for both
            seen.add(item)
            fresh.append(item)
    return fresh, folded
