"""The schedule of the rechecks (purge/recheck.py): rounds, replacement by a newer confirm, the
bound on what waits, and a cache that keeps going back to an older copy."""

from __future__ import annotations

import math

import anyio
import pytest

from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord
from relaysync.purge.confirm import Head, Served
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.purger import Purger
from relaysync.purge.recheck import HELD_AGAIN_S, MAX_REGRESSIONS, RECHECKS_PER_PASS, Look, Rechecks
from relaysync.purge.site import CacheSpec, OriginSpec
from tests.unit.purge.conftest import one_site

pytestmark = pytest.mark.anyio

ITEM = PurgeItem(site_id=1, cache="nginx", url="http://h/pub/")
OTHER = PurgeItem(site_id=1, cache="nginx", url="http://h/other/")


def _served(digest: str = "d1") -> tuple[Served, ...]:
    return (Served("identity", 200, digest, Head(200, 10, "", "")),)


def test_each_round_comes_after_the_one_before() -> None:
    r = Rechecks((2.0, 15.0))
    r.confirmed(ITEM, _served(), 100.0)
    assert r.pop_due(101.9) == ([], 102.0)
    (first,), later = r.pop_due(102.0)
    assert (first.round, later) == (0, math.inf)
    r.started(first)
    assert len(r) == 0
    r.passed(first, 103.0)
    assert r.pop_due(117.9) == ([], 118.0)
    (second,), _ = r.pop_due(118.0)
    r.started(second)
    r.passed(second, 118.5)
    assert len(r) == 0 and r.pop_due(1e9) == ([], math.inf)


def test_a_newer_confirm_replaces_the_rounds_of_the_older() -> None:
    r = Rechecks((2.0, 15.0))
    r.confirmed(ITEM, _served("d1"), 100.0)
    r.confirmed(ITEM, _served("d2"), 101.0)
    assert r.pop_due(102.5) == ([], 103.0)  # the older one's entry is skipped
    (only,), _ = r.pop_due(103.0)
    assert only.served == _served("d2") and len(r) == 1


def test_a_look_that_ends_after_a_newer_confirm_adds_no_round() -> None:
    r = Rechecks((2.0, 15.0))
    r.confirmed(ITEM, _served("d1"), 100.0)
    (running,), _ = r.pop_due(102.0)
    r.started(running)
    r.confirmed(ITEM, _served("d2"), 102.5)  # while it ran
    r.passed(running, 103.0)
    due, later = r.pop_due(200.0)
    assert [x.served for x in due] == [_served("d2")] and later == math.inf


def test_nothing_waits_without_a_schedule_or_a_look() -> None:
    r = Rechecks(())
    r.confirmed(ITEM, _served(), 0.0)
    assert len(r) == 0
    r = Rechecks((1.0,))
    r.confirmed(ITEM, (), 0.0)  # no origin: nothing was seen to compare with
    assert len(r) == 0


def test_past_the_limit_the_oldest_is_dropped_and_counted() -> None:
    r = Rechecks((1.0,), limit=2)
    for i in range(3):
        r.confirmed(PurgeItem(site_id=1, cache="nginx", url=f"http://h/{i}"), _served(), 0.0)
    due, _ = r.pop_due(1.0)
    assert [x.item.url for x in due] == ["http://h/1", "http://h/2"] and r.dropped == 1


def test_a_recheck_given_back_is_due_again_when_asked() -> None:
    r = Rechecks((1.0,))
    r.confirmed(ITEM, _served(), 0.0)
    r.confirmed(OTHER, _served(), 0.5)
    due, _ = r.pop_due(2.0)
    r.started(due[1])
    r.put_back(due, 2.5)  # the started one is not waiting any more: not given back
    assert r.pop_due(2.4) == ([], 2.5) and r.next_due() == 2.5
    again, _ = r.pop_due(2.5)
    assert [x.item for x in again] == [ITEM]


def test_a_pass_takes_a_bounded_number_of_due_rechecks() -> None:
    r = Rechecks((1.0,))
    for i in range(5):
        r.confirmed(PurgeItem(site_id=1, cache="nginx", url=f"http://h/{i}"), _served(), 0.0)
    due, later = r.pop_due(1.0, limit=2)
    assert len(due) == 2 and later == 1.0 and len(r) == 5


def test_a_cache_that_keeps_going_back_to_the_same_old_copy_is_left_after_a_few_times() -> None:
    r = Rechecks((1.0,))
    now = 0.0
    for times in range(1, MAX_REGRESSIONS + 1):
        r.confirmed(ITEM, _served("d1"), now)
        (look,), _ = r.pop_due(now + 1.0)
        r.started(look)
        assert r.went_back(look) == times
        now += 10.0
    r.confirmed(ITEM, _served("d1"), now)  # the item's refresh, confirmed once more
    assert len(r) == 0 and r.stale == MAX_REGRESSIONS
    r.confirmed(ITEM, _served("d2"), now)  # a new version: looked at again
    assert len(r) == 1


def test_a_copy_that_holds_through_every_round_forgets_its_goings_back() -> None:
    r = Rechecks((1.0,))
    r.confirmed(ITEM, _served("d1"), 0.0)
    (look,), _ = r.pop_due(1.0)
    r.started(look)
    assert r.went_back(look) == 1
    r.confirmed(ITEM, _served("d1"), 2.0)
    (look,), _ = r.pop_due(3.0)
    r.started(look)
    r.passed(look, 3.5)  # the last round held
    r.confirmed(ITEM, _served("d1"), 10.0)
    (look,), _ = r.pop_due(11.0)
    r.started(look)
    assert r.went_back(look) == 1


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError):
        Rechecks((-1.0,))
    with pytest.raises(ValueError):
        Rechecks((1.0,), limit=0)


class _Started:
    """A task group that only notes what it was asked to start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def start_soon(self, _func: object, key: tuple[int, str, str], *_args: object) -> None:
        self.started.append(key[2])


def _purger_with(store: Store, *urls: str) -> Purger:
    purger = Purger(store, concurrency=8, per_cache=4, recheck_after_s=(1.0,))
    for url in urls:
        purger.rechecks.confirmed(PurgeItem(site_id=1, cache="nginx", url=url), _served(), 0.0)
    return purger


async def test_rechecks_leave_a_url_with_an_item_to_that_item(store: Store) -> None:
    purger = _purger_with(store, "http://h/queued", "http://h/running", "http://h/free")
    purger._busy.add((1, "nginx", "http://h/running"))
    tg = _Started()
    purger._dispatch_rechecks(tg, 5.0, {(1, "nginx", "http://h/queued")})  # type: ignore[arg-type]
    assert tg.started == ["http://h/free"] and len(purger.rechecks) == 0


async def test_rechecks_take_at_most_half_of_a_gate_and_wait_for_a_try_to_end(
    store: Store,
) -> None:
    purger = _purger_with(store, *(f"http://h/{i}" for i in range(5)))
    tg = _Started()
    held_until = purger._dispatch_rechecks(tg, 5.0, set())  # type: ignore[arg-type]
    assert len(tg.started) == 2 and len(purger.rechecks) == 3  # half of 4 slots
    assert held_until == 5.0 + HELD_AGAIN_S
    gate = purger._gate("1/nginx")
    gate.release()
    purger._in_flight -= 1
    purger._dispatch_rechecks(tg, 5.0 + HELD_AGAIN_S, set())  # type: ignore[arg-type]
    assert len(tg.started) == 3


async def test_rechecks_take_at_most_half_of_the_concurrency(store: Store) -> None:
    purger = _purger_with(store, "http://h/a")
    purger._in_flight = 4  # of 8: the queue's items
    tg = _Started()
    assert purger._dispatch_rechecks(tg, 5.0, set()) == math.inf  # type: ignore[arg-type]
    assert tg.started == [] and len(purger.rechecks) == 1
    one = Purger(store, concurrency=1, recheck_after_s=(1.0,))  # still one recheck at a time
    one.rechecks.confirmed(ITEM, _served(), 0.0)
    one._dispatch_rechecks(tg, 5.0, set())  # type: ignore[arg-type]
    assert tg.started == [ITEM.url]


async def test_a_full_gate_does_not_hold_back_the_rechecks_of_another_cache(
    store: Store,
) -> None:
    """More held rechecks of a busy cache than a pass takes kept an idle cache's waiting until
    the busy one's backlog drained."""
    purger = _purger_with(store, *(f"http://h/{i}" for i in range(RECHECKS_PER_PASS + 50)))
    squid = PurgeItem(site_id=1, cache="squid", url="http://h/s")
    purger.rechecks.confirmed(squid, _served(), 0.5)  # due after all of nginx's
    gate = purger._gate("1/nginx")
    assert gate.admit(0.0) and gate.admit(0.0)  # half full: nginx's rechecks are held
    tg = _Started()
    now = 5.0
    for _ in range(3):
        purger._dispatch_rechecks(tg, now, set())  # type: ignore[arg-type]
        now += 0.01
    assert tg.started == [squid.url]


async def test_the_rechecks_of_a_cache_whose_gate_is_open_end(store: Store) -> None:
    """A down or refusing cache cannot be looked at, and a recheck must not take its probe."""
    purger = _purger_with(store, "http://h/a")
    purger._gate("1/nginx").refuse(0.0, "403")
    tg = _Started()
    purger._dispatch_rechecks(tg, 5.0, set())  # type: ignore[arg-type]
    assert tg.started == [] and len(purger.rechecks) == 0
    assert purger._gate("1/nginx").refused == "403"  # its breaker as it was


async def test_nothing_is_asked_while_a_change_is_not_on_every_origin(store: Store) -> None:
    """An origin with a change the others lack (one without a URL, not asked, too) could serve
    it to the cache's refresh: the look waits for the next round."""
    purger = _purger_with(store)
    site = one_site(
        CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:1"),
        origins=(OriginSpec(node_id="o1", url="http://o1"), OriginSpec(node_id="o2")),
    )
    assert purger._not_now(site) is None
    record = CommitRecord(seq=1, op="write", path="/t/a")
    released = purger.tracker.observe(
        site_id=1,
        mapping_id=1,
        origins=frozenset({"o1", "o2"}),
        source="src",
        target="o2",
        records=[record],
        states={"o1": "up", "o2": "up"},
        now=0.0,
    )
    assert released == []  # o1 has not committed it
    look = purger._not_now(site)
    assert look is not None and look.outcome == "unknown"
    released = purger.tracker.observe(
        site_id=1,
        mapping_id=1,
        origins=frozenset({"o1", "o2"}),
        source="src",
        target="o1",
        records=[record],
        states={"o1": "up", "o2": "up"},
        now=0.0,
    )
    assert len(released) == 1 and purger._not_now(site) is None  # on every origin now


async def test_the_slots_are_free_while_a_cache_that_went_back_is_queued_again(
    store: Store,
) -> None:
    """Queuing the item again waits for the store (a failover: for as long as it lasts); the
    look's slot of the cache, of the overall concurrency and its URL are free meanwhile."""
    purger = _purger_with(store, ITEM.url)
    (recheck,), _ = purger.rechecks.pop_due(5.0)
    purger.rechecks.started(recheck)
    gate = purger._gate("1/nginx")
    assert gate.admit(5.0)
    purger._in_flight, key = 1, (1, "nginx", ITEM.url)
    purger._busy.add(key)
    queued, store_back = anyio.Event(), anyio.Event()

    async def look(_recheck: object) -> Look:
        return Look("back", "old copy")

    async def enqueue(_items: object) -> None:
        queued.set()
        await store_back.wait()

    purger._recheck = look  # type: ignore[method-assign]
    purger._enqueue = enqueue  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(purger._run_recheck, key, recheck, gate)
        await queued.wait()
        assert (gate.in_flight, purger._in_flight, key in purger._busy) == (0, 0, False)
        assert purger.rechecks.stale == 0  # said once it is queued
        store_back.set()
    assert purger.rechecks.stale == 1
