"""The purger's intake (purge/intake.py): a change whose planning keeps failing on the store is
set aside after STORE_FAILURES_IN_ORDER tries and retried on its own backoff, without spinning;
a bug planning a change puts it behind the others wherever it stands."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from relaysync.errors import StoreError
from relaysync.master.store import Store
from relaysync.purge.holds import PurgeHold
from relaysync.purge.intake import STORE_FAILURES_IN_ORDER
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


def _purger(store: Store, monkeypatch: pytest.MonkeyPatch, fails: dict[str, type]) -> Purger:
    """A purger on one site whose planning of a path in `fails` raises that exception."""
    purger = Purger(store, retry_min_s=0.01, retry_max_s=0.05)
    purger._sites = {1: one_site(CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:9"))}
    real_plan = purger._plan

    async def plan(site: SiteSpec, change: Released) -> list[PurgeItem]:
        if change.path in fails:
            raise fails[change.path]("failing " + change.path)
        return await real_plan(site, change)

    monkeypatch.setattr(purger, "_plan", plan)
    return purger


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_bug_behind_a_change_set_aside_is_put_behind_the_others_and_let_go(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug's change was put behind the others only if it stood at the head: behind a change
    set aside after store errors, it was tried and failed again at every turn, and its reports
    (acknowledgements are cumulative: every later one of their agents) waited for ever."""
    purger = _purger(store, monkeypatch, {"stuck": StoreError, "buggy": RuntimeError})
    (stuck, stuck_hold), (buggy, buggy_hold), (fine, fine_hold) = (
        _held(p) for p in ("stuck", "buggy", "fine")
    )
    purger._released.extend([stuck, buggy, fine])
    async with anyio.create_task_group() as tg:
        tg.start_soon(purger._intake_loop)
        await _until(lambda: fine_hold.done and buggy_hold.done)
        assert not stuck_hold.done and stuck.retry.failures >= STORE_FAILURES_IN_ORDER
        tg.cancel_scope.cancel()
    assert [c.path for c in purger._released] == ["stuck", "buggy"]  # both tried again


async def test_a_change_set_aside_is_retried_on_its_backoff_without_spinning(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set aside, the change is tried once per backoff: the intake waits for it (or for a new
    change) in between, it does not go round without planning anything. Once the store
    answers it is queued."""
    fails: dict[str, type] = {"stuck": StoreError}
    purger = _purger(store, monkeypatch, fails)
    intakes = [0]
    real_intake = purger._intake

    async def counted() -> None:
        intakes[0] += 1
        await real_intake()

    monkeypatch.setattr(purger, "_intake", counted)
    stuck, hold = _held("stuck")
    purger._released.append(stuck)
    async with anyio.create_task_group() as tg:
        tg.start_soon(purger._intake_loop)
        await _until(lambda: stuck.retry.failures >= 2 * STORE_FAILURES_IN_ORDER)
        assert intakes[0] <= stuck.retry.failures + 1  # one intake per try
        assert not hold.done
        del fails["stuck"]
        await _until(lambda: hold.done)
        tg.cancel_scope.cancel()
    assert not purger._released
