"""The purger's intake (purge/intake.py): a change whose planning fails on the store is set aside
and planned again apart, the oldest first, one query at a time (a store that is down gets one
query per backoff however many wait), while the changes behind it go on, also while its query
takes minutes to fail; a bug planning a change puts it behind the others."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from relaysync.errors import StoreError
from relaysync.master.store import Store
from relaysync.purge.holds import PurgeHold
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.ordering import Released
from relaysync.purge.purger import Purger
from relaysync.purge.site import CacheSpec, SiteSpec
from tests.unit.purge.conftest import one_site

pytestmark = pytest.mark.anyio
WAIT_S = 30.0


def _held(path: str) -> tuple[Released, PurgeHold]:
    """A released write of `path` on site 1, with the hold of a report waiting for it."""
    change, hold = Released(site_id=1, op="write", path=path), PurgeHold()
    change.waiters.add(hold)
    hold.seal()
    return change, hold


class Planning:
    """The purger's planning, with the paths in `fails` failing as this says; `tried` lists
    the paths planned, in order."""

    def __init__(self, purger: Purger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fails: dict[str, type[Exception]] = {}
        self.tried: list[str] = []
        self.slow = anyio.Event()  # set: a slow query of "slow" (not its first) ends
        real_plan = purger._plan

        async def plan(site: SiteSpec, change: Released) -> list[PurgeItem]:
            self.tried.append(change.path)
            if change.path == "slow" and self.tried.count("slow") > 1:
                await self.slow.wait()  # a query that fails only after minutes
            if change.path in self.fails:
                raise self.fails[change.path]("failing " + change.path)
            return await real_plan(site, change)

        monkeypatch.setattr(purger, "_plan", plan)


def _purger(store: Store) -> Purger:
    purger = Purger(store, retry_min_s=0.01, retry_max_s=0.05)
    purger._sites = {1: one_site(CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:9"))}
    return purger


def _release(purger: Purger, *changes: Released) -> None:
    purger._released.extend(changes)
    purger._intake_wake.set()


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.01)


async def _serving(purger: Purger, tg: anyio.abc.TaskGroup) -> None:
    tg.start_soon(purger._intake_loop)
    tg.start_soon(purger._aside_loop)


async def test_changes_set_aside_are_planned_again_one_query_at_a_time_in_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty changes whose planning fails on the store (it is down for them): each failed
    once as it came, then only the oldest is asked again until the store answers (a first
    version asked every one of them at each backoff: 99 queries a second for 100 changes); the
    change behind them went at once; then all go, in the order they came."""
    purger = _purger(store)
    planning = Planning(purger, monkeypatch)
    stuck = [_held(f"d{n}") for n in range(20)]
    planning.fails = {c.path: StoreError for c, _ in stuck}
    fine, fine_hold = _held("fine")
    async with anyio.create_task_group() as tg:
        await _serving(purger, tg)
        _release(purger, *(c for c, _ in stuck), fine)
        await _until(lambda: fine_hold.done)
        first = len(planning.tried)
        await _until(lambda: len(planning.tried) >= first + 10)  # ten more tries
        assert set(planning.tried[first:]) == {"d0"}  # the oldest alone
        assert not any(h.done for _, h in stuck)
        planning.tried.clear()
        planning.fails.clear()
        await _until(lambda: all(h.done for _, h in stuck))
        tg.cancel_scope.cancel()
    assert planning.tried == [c.path for c, _ in stuck]  # in the order they came
    assert not purger._released and not purger._aside


async def test_a_change_whose_query_takes_minutes_to_fail_holds_up_no_other(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set aside, the change was planned again inline, between the others: each try held
    the whole intake for as long as its query took (a statement timeout: 300 s)."""
    purger = _purger(store)
    planning = Planning(purger, monkeypatch)
    planning.fails = {"slow": StoreError}
    slow, slow_hold = _held("slow")
    async with anyio.create_task_group() as tg:
        await _serving(purger, tg)
        _release(purger, slow)
        await _until(lambda: planning.tried.count("slow") == 2)  # its second try is running
        holds = []
        for n in range(5):
            change, hold = _held(f"f{n}")
            holds.append(hold)
            _release(purger, change)
        await _until(lambda: all(h.done for h in holds))
        assert not slow_hold.done
        del planning.fails["slow"]
        planning.slow.set()
        await _until(lambda: slow_hold.done)
        tg.cancel_scope.cancel()


async def test_a_bug_in_planning_puts_the_change_behind_and_lets_its_reports_go(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    purger = _purger(store)
    planning = Planning(purger, monkeypatch)
    planning.fails = {"stuck": StoreError, "buggy": RuntimeError}
    (stuck, stuck_hold), (buggy, buggy_hold), (fine, fine_hold) = (
        _held(p) for p in ("stuck", "buggy", "fine")
    )
    async with anyio.create_task_group() as tg:
        await _serving(purger, tg)
        _release(purger, stuck, buggy, fine)
        await _until(lambda: fine_hold.done and buggy_hold.done)
        assert not stuck_hold.done
        tg.cancel_scope.cancel()
    assert [c.path for c in purger._released] == ["buggy"]  # tried again, behind
    assert [c.path for c in purger._aside] == ["stuck"]


async def test_a_barrier_waits_for_the_changes_set_aside(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job log keeps reports read back from its spool until the purger's barrier: a change
    set aside is not queued, so the barrier waits for it too."""
    purger = _purger(store)
    planning = Planning(purger, monkeypatch)
    planning.fails = {"stuck": StoreError}
    stuck, _ = _held("stuck")
    async with anyio.create_task_group() as tg:
        await _serving(purger, tg)
        _release(purger, stuck)
        await _until(lambda: bool(purger._aside))
        barrier = purger.barrier()
        assert barrier is not None and not barrier.done
        planning.fails.clear()
        await _until(lambda: barrier.done)
        tg.cancel_scope.cancel()
