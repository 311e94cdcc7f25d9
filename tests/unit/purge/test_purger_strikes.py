"""The tries a purge group counts before it is given up: its newest item's. Items of one URL
due together run as one group; the group counted the tries of whichever item came first, so a
refresh queued for a later change, grouped with an older one that had used up its tries, was
given up after its first (a listing of a directory that kept changing stayed stale)."""

from __future__ import annotations

import time

import pytest

from relaysync.master.store import Store
from relaysync.purge.jobs import PurgeItem, QueuedPurge
from relaysync.purge.purger import Purger

pytestmark = pytest.mark.anyio

ITEM = PurgeItem(site_id=1, cache="nginx", url="http://h/pub/")


def _queued(queue_id: int, attempts: int) -> QueuedPurge:
    return QueuedPurge(id=queue_id, item=ITEM, attempts=attempts, next_at=0.0)


async def test_a_newer_item_in_a_group_gets_its_own_tries(store: Store) -> None:
    purger = Purger(store, max_attempts=3)
    older, newer = _queued(7, 2), _queued(9, 0)
    purger._strikes[older.id] = 2  # one more failed try gives it up
    site = None  # only read when it is given up (the notification)
    purger._failed(site, ITEM, [older, newer], 1, time.perf_counter(), "stale")  # type: ignore[arg-type]
    assert purger._done == []  # both kept: the newer item has had one try
    assert {q.id: q.attempts for q in purger._queue.values()} == {7: 1, 9: 1}
    assert purger._strikes == {9: 1}
    for _ in range(2):  # its own tries used up: the group is given up
        purger._failed(site, ITEM, [older, newer], 1, time.perf_counter(), "stale")  # type: ignore[arg-type]
    assert sorted(purger._done) == [7, 9] and purger._strikes == {}
