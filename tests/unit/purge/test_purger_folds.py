"""Folds of new purge items into untried queued ones (purge/folds.py), looked up in an index the
purger keeps beside its queue: every intake round built a set of the whole queue's untried items
twice, on the event loop (65 ms at 100,000 items queued behind a down cache, 1.7 s at
1,000,000), even for one change."""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest

from relaysync.master.store import Store
from relaysync.purge.due import file_due
from relaysync.purge.jobs import PurgeItem, QueuedPurge
from relaysync.purge.purger import Purger

pytestmark = pytest.mark.anyio

N = 2_000


class CountedUrl(str):
    """A URL that counts how often it is hashed (each time an item is put in a set or dict)."""

    hashed = 0

    def __hash__(self) -> int:
        CountedUrl.hashed += 1
        return str.__hash__(self)

    __eq__ = str.__eq__


def _site_id(store: Store) -> int:
    return store.create_site(
        name="s",
        provider="acme",
        mapping=None,
        root="",
        base_urls=["http://s.example.com"],
        path_prefix="/",
        caches=[{"name": "nginx", "driver": "nginx", "address": "127.0.0.1:9"}],
    ).id


def _untried_consistent(purger: Purger) -> None:
    want = Counter(q.item for q in purger._queue.values() if q.attempts == 0)
    assert purger._untried._rows == dict(want)


def _rows(purger: Purger, item: PurgeItem) -> list[QueuedPurge]:
    return [q for q in purger._queue.values() if q.item == item]


async def _take_for_a_try(purger: Purger, item: PurgeItem) -> list[QueuedPurge]:
    """Dispatch `item`'s due group as the work loop does; the try itself does nothing."""
    taken: list[QueuedPurge] = []

    async def run(key: tuple[int, str, str], group: list[QueuedPurge], gate: object) -> None:
        taken.extend(group)
        gate.release()  # type: ignore[attr-defined]
        purger._in_flight -= 1
        purger._busy.discard(key)

    purger._run = run  # type: ignore[method-assign]
    now = time.time()
    found = file_due(purger._queue, purger._busy, now, purger._gate_key, purger._gate)
    due = {
        gate: {key: group for key, group in groups.items() if key[0][2] == item.url}
        for gate, groups in found.due.items()
    }
    async with anyio.create_task_group() as tg:
        purger._dispatch(tg, due, now)
    return taken


async def test_the_untried_index_follows_the_queue_and_a_restart(store: Store) -> None:
    purger = Purger(store)
    a = PurgeItem(site_id=_site_id(store), cache="nginx", url="http://s.example.com/a")
    b = PurgeItem(site_id=a.site_id, cache="nginx", url="http://s.example.com/b")
    await purger._enqueue([a, b, a])  # the same URL twice in one batch: one row
    await purger._enqueue([a])  # folded into the untried row
    assert len(purger._queue) == 2
    _untried_consistent(purger)
    [tried] = await _take_for_a_try(purger, a)
    assert a not in purger._untried and b in purger._untried
    await purger._enqueue([a])  # its try may have begun before this change: queued anew
    assert len(_rows(purger, a)) == 1
    _untried_consistent(purger)
    purger._retry(a, [tried], 1, "503 from the cache", delay=60.0)  # back, waiting to retry
    _untried_consistent(purger)
    await _take_for_a_try(purger, a)  # the untried row (the retried one waits)
    assert [q.attempts for q in _rows(purger, a)] == [1] and a not in purger._untried
    await purger._enqueue([a])  # not folded into a retried row
    assert sorted(q.attempts for q in _rows(purger, a)) == [0, 1]
    sites = {s.id: s for s in store.list_sites()}
    purger._reset_changed_gates({}, sites)  # a changed cache: its retry is due at once
    assert [q.next_at for q in _rows(purger, a) if q.attempts] == [0.0]
    _untried_consistent(purger)
    await purger._flush()

    restarted = Purger(store)  # the store's rows: a retried; b, and a twice, untried (the
    await restarted._load_queue()  # row in flight when the purger stopped is untried again)
    assert restarted._untried._rows == {a: 2, b: 1}
    _untried_consistent(restarted)
    await restarted._enqueue([a, b])  # both folded
    assert len(restarted._queue) == len(store.pending_purges()) == 4
    _untried_consistent(restarted)


async def test_an_intake_round_looks_up_its_items_not_the_queue(store: Store) -> None:
    purger = Purger(store)
    site_id = _site_id(store)
    queued = [
        PurgeItem(site_id=site_id, cache="nginx", url=CountedUrl(f"http://s.example.com/{i}"))
        for i in range(N)
    ]
    await purger._enqueue(queued)  # a down cache's backlog
    CountedUrl.hashed = 0
    new = PurgeItem(site_id=site_id, cache="nginx", url="http://s.example.com/new")
    again = PurgeItem(site_id=site_id, cache="nginx", url=f"http://s.example.com/{N // 2}")
    await purger._enqueue([new, again])
    assert len(purger._queue) == N + 1
    assert CountedUrl.hashed == 0  # the old folds: 2 * N, a set of the whole queue twice
