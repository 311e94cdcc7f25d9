"""The purge workers' loop: due items filed by cache and by (URL, action) with one lookup each
(each was compared with every group filed before it: 2.5 ms a pass at 600 queued items, 140 ms
at 5,000, and a pass runs on every finished item); a gate whose cache changed keeps its slots'
count right; a full gate does not make the loop go round without waiting."""

from __future__ import annotations

import dataclasses
import math
import threading

import anyio
import pytest

from relaysync.master.store import Store
from relaysync.purge.due import add_due, file_due, probe_due
from relaysync.purge.gates import Gate
from relaysync.purge.jobs import PurgeItem, QueuedPurge
from relaysync.purge.purger import Purger
from relaysync.purge.site import CacheSpec, SiteSpec
from tests.unit.purge.conftest import one_site

pytestmark = pytest.mark.anyio

N = 3_000


class CountedUrl(str):
    """A URL that counts how often it is compared."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountedUrl.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


async def test_a_pass_files_each_due_item_with_one_lookup() -> None:
    queued = [
        QueuedPurge(
            id=i,
            item=PurgeItem(site_id=1, cache="nginx", url=CountedUrl(f"http://h/d/f{i % (N // 2)}")),
            attempts=0,
            next_at=0.0,
        )
        for i in range(N)
    ]
    due: dict[str, dict[tuple[tuple[int, str, str], str], list[QueuedPurge]]] = {}
    CountedUrl.compared = 0
    for q in queued:
        add_due(due, "1/nginx", (q.item.site_id, q.item.cache, q.item.url), q)
    assert CountedUrl.compared <= 2 * N  # the old pass: N * N / 4 = 2,250,000 here
    groups = due["1/nginx"]
    assert len(groups) == N // 2  # each URL's two items in one group, in queue order
    assert [q.id for q in groups[((1, "nginx", "http://h/d/f0"), "refresh")]] == [0, N // 2]


def _site(cache: CacheSpec) -> SiteSpec:
    return one_site(cache)


async def test_a_cache_changed_while_its_purges_run_gets_its_slots_back(store: object) -> None:
    """The gate was replaced by a new one that kept the count of the tries in flight, which
    released the old one: the cache had no slot again, for good. Their outcomes stay with the
    old gate: a refusal under the old settings does not close the new one."""
    purger = Purger(store, per_cache=2)  # type: ignore[arg-type]
    before = CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:1")
    after = dataclasses.replace(before, accept_encodings=("gzip",))
    gate = purger._gate(before.address)
    assert gate.admit(0.0) and gate.admit(0.0)  # two tries in flight
    gate.unreachable(0.0)
    purger._reset_changed_gates({1: _site(before)}, {1: _site(after)})
    gate.refuse(0.0, "403 under the old token")  # a try of the old settings ends refused
    gate.release()  # the tries end, releasing the gate they took
    gate.release()
    now = purger._gate(before.address)
    assert (now.in_flight, now.failures, now.refused) == (0, 0, "") and now.admit(0.0)


async def test_a_full_gate_does_not_make_the_loop_go_round_at_once(store: object) -> None:
    """A closed gate at its limit said "now" as its next probe: the loop went round without
    waiting for as long as its tries ran (about 23,000 passes a second)."""
    purger = Purger(store, per_cache=1, probe_min_s=5.0)  # type: ignore[arg-type]
    gate = purger._gate("127.0.0.1:1")
    assert gate.admit(100.0)  # full
    assert probe_due(gate, 100.0) == math.inf  # the try's end wakes it
    for _ in range(3):
        gate.unreachable(100.0)  # open: a probe at 105
    assert probe_due(gate, 100.0) == pytest.approx(105.0, abs=1.0)


async def test_sites_read_in_a_worker_thread_are_taken_on_the_event_loop(store: Store) -> None:
    """reload_sites ran whole in the API's and the state loop's worker threads: it replaced
    gates and set the work loop's wake event there (asyncio noticed it at the loop's next 1 s
    timeout at best)."""
    purger = Purger(store)
    cache = CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:1")
    threads: list[int] = []
    take = purger._reset_changed_gates

    def noted(old: dict[int, SiteSpec], new: dict[int, SiteSpec]) -> None:
        threads.append(threading.get_ident())
        take(old, new)

    purger._reset_changed_gates = noted  # type: ignore[method-assign]
    store.list_sites = lambda: [_site(cache)]  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        await tg.start(purger.serve)
        threads.clear()
        await anyio.to_thread.run_sync(purger.reload_sites)
        assert threads == [threading.get_ident()] and set(purger._sites) == {1}
        tg.cancel_scope.cancel()


async def test_a_reload_that_began_first_and_ends_last_does_not_put_old_sites_back(
    store: Store,
) -> None:
    """Two reloads at once (two API calls): the one that read the store first and finished
    last put its older sites in place until the next periodic reload."""
    purger = Purger(store)
    old = _site(CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:1"))
    new = dataclasses.replace(old, base_urls=("http://new",))
    read_old, let_go = threading.Event(), threading.Event()
    answers: list[list[SiteSpec]] = []  # what the next reads find (empty: the old sites)

    def list_sites() -> list[SiteSpec]:
        if not answers:
            return [old]
        sites = answers.pop(0)
        if sites == [old]:  # the first reload has read, and is slow to finish
            read_old.set()
            assert let_go.wait(30.0)
        return sites

    store.list_sites = list_sites  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        await tg.start(purger.serve)
        answers += [[old], [new]]
        first = threading.Thread(target=purger.reload_sites)  # as an API request's thread
        first.start()
        assert await anyio.to_thread.run_sync(read_old.wait, 30.0)
        await anyio.to_thread.run_sync(purger.reload_sites)  # began later, read the new sites
        assert purger._sites[1].base_urls == ("http://new",)
        let_go.set()
        await anyio.to_thread.run_sync(first.join, 30.0)
        assert not first.is_alive()
        assert purger._sites[1].base_urls == ("http://new",)
        tg.cancel_scope.cancel()


async def test_a_cache_whose_settings_change_has_its_waiting_items_tried_at_once(
    store: Store,
) -> None:
    """Items refused under the old settings kept their 60 s wait after the operator's fix (the
    gate was fresh, the items were not); the other caches' items keep theirs."""
    purger = Purger(store)
    nginx = CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:1")
    squid = CacheSpec(name="squid", driver="squid", address="127.0.0.1:2")
    old = dataclasses.replace(_site(nginx), caches=(nginx, squid))
    fixed = dataclasses.replace(
        old, caches=(dataclasses.replace(nginx, headers=(("Authorization", "Bearer new"),)), squid)
    )
    for i, cache in enumerate(("nginx", "squid")):
        item = PurgeItem(site_id=1, cache=cache, url="http://h/a")
        purger._queue[i] = QueuedPurge(id=i, item=item, attempts=1, next_at=1e12)
    purger._reset_changed_gates({1: old}, {1: old})  # a periodic reload: nothing changed
    assert [q.next_at for q in purger._queue.values()] == [1e12, 1e12]
    purger._reset_changed_gates({1: old}, {1: fixed})
    assert [q.next_at for q in purger._queue.values()] == [0.0, 1e12]


async def test_the_gate_of_a_removed_cache_goes_once_its_tries_end(store: Store) -> None:
    purger = Purger(store)
    cache = CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:1")
    gate = purger._gate(cache.address)
    assert gate.admit(0.0)
    purger._reset_changed_gates({1: _site(cache)}, {})
    assert cache.address in purger._gates  # a try is out
    gate.release()
    purger._reset_changed_gates({}, {})
    assert purger._gates == {}


async def test_a_retried_item_is_tried_again_before_the_items_queued_after_it(
    store: Store,
) -> None:
    """A retried item went back to the end of the queue: during a deploy's backlog it waited
    behind every item queued after it, the stalest URL served old the longest."""
    purger = Purger(store, concurrency=1, per_cache=1)
    purger._sites = {1: _site(CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:1"))}
    for i in range(6):
        item = PurgeItem(site_id=1, cache="nginx", url=f"http://h/f{i}")
        purger._queue[i] = QueuedPurge(id=i, item=item, attempts=0, next_at=0.0)
    tried: list[int] = []

    async def run(key: tuple[int, str, str], group: list[QueuedPurge], gate: object) -> None:
        q = group[0]
        tried.append(q.id)
        try:
            if q.id == 0 and q.attempts == 0:  # its first try fails; due again at once
                purger._retry(q.item, group, 1, "503 from the cache", delay=0.0)
            else:
                purger._done.append(q.id)
        finally:
            gate.release()  # type: ignore[attr-defined]
            purger._in_flight -= 1
            purger._busy.discard(key)
            purger._work_wake.set()

    purger._run = run  # type: ignore[method-assign]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(purger._work_loop, tg)
            while len(purger._done) < 6:
                await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    assert tried == [0, 0, 1, 2, 3, 4, 5]  # the old loop: [0, 1, 2, 3, 4, 5, 0]


async def test_a_pass_files_the_queue_in_its_order_and_says_when_the_next_item_is_due() -> None:
    gates: dict[str, Gate] = {}

    def gate(key: str) -> Gate:
        return gates.setdefault(key, Gate(limit=1))

    queue = {
        i: QueuedPurge(
            id=i,
            item=PurgeItem(site_id=1, cache="nginx", url=f"http://h/f{i % 2}"),
            attempts=0,
            next_at=50.0 if i == 3 else 0.0,
        )
        for i in range(4)
    }
    busy = {(1, "nginx", "http://h/f0")}
    found = file_due(queue, busy, 10.0, lambda site, cache: f"{site}/{cache}", gate)
    assert found.next_at == 11.0  # the pass looks again within a second at the latest
    assert list(found.due) == ["1/nginx"]
    assert [[q.id for q in g] for g in found.due["1/nginx"].values()] == [[1]]  # f0 busy, 3 later
    assert found.pending == {(1, "nginx", "http://h/f0"), (1, "nginx", "http://h/f1")}
    gate("1/nginx").admit(10.0)  # full: nothing filed
    assert file_due(queue, set(), 10.0, lambda s, c: f"{s}/{c}", gate).due == {}


async def test_items_queued_with_lower_ids_than_those_held_are_put_in_order(store: Store) -> None:
    """Concurrent queue writes (PostgreSQL) may return their ids out of order: the next pass
    sorts the queue again, as after a retry."""
    purger = Purger(store)
    item = PurgeItem(site_id=_stored_site(store, "s").id, cache="nginx", url="http://h/a")
    await purger._enqueue([item, dataclasses.replace(item, url="http://h/b")])
    assert len(purger._queue) == 2 and not purger._requeued  # ids in order: nothing to sort
    purger._queue[10**9] = QueuedPurge(id=10**9, item=item, attempts=0, next_at=0.0)
    await purger._enqueue([dataclasses.replace(item, url="http://h/c")])
    assert purger._requeued  # the store's id is lower than one held


async def test_items_of_a_site_deleted_before_they_are_queued_are_dropped(store: Store) -> None:
    """Their rows broke the queue's reference to the site: the write failed, and the purger
    retried it for ever, queueing nothing for any site after it."""
    purger = Purger(store)
    kept, gone = _stored_site(store, "s"), _stored_site(store, "t")
    store.delete_site(gone.id)
    items = [
        PurgeItem(site_id=gone.id, cache="nginx", url="http://h/a"),
        PurgeItem(site_id=kept.id, cache="nginx", url="http://h/b"),
    ]
    with anyio.fail_after(10):  # the old store: an IntegrityError at every try
        await purger._enqueue(items)
    assert [q.item.url for q in purger._queue.values()] == ["http://h/b"]
    assert [q.item.url for q in store.pending_purges()] == ["http://h/b"]


def _stored_site(store: Store, name: str) -> SiteSpec:
    return store.create_site(
        name=name,
        provider="acme",
        mapping=None,
        root="",
        base_urls=[f"http://{name}.example.com"],
        path_prefix="/",
        caches=[{"name": "nginx", "driver": "nginx", "address": "127.0.0.1:9"}],
    )
