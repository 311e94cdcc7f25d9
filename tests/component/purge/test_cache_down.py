"""A cache that is down: the operator is told when its gate opens and when it answers again
(`cache_unreachable`, `cache_reachable`), and its queue does not grow a row per change of a URL
while it waits (a new item folds into a queued one of the same URL that was not tried yet)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.component.purge.conftest import Harness
from tests.component.purge.test_cache_faults import HungCache

pytestmark = pytest.mark.anyio

REWRITES = 200


@pytest.fixture
def purger_options() -> dict[str, Any]:
    return {"probe_min_s": 0.05, "probe_max_s": 0.3}


@pytest.fixture
def down(harness: Harness) -> Iterator[tuple[HungCache, list[tuple[str, dict[str, Any]]]]]:
    """A cache that closes every connection at once, the site's only one; what is notified."""
    cache = HungCache()
    cache.set_mode("drop")
    notes: list[tuple[str, dict[str, Any]]] = []
    harness.purger.notify = lambda kind, data: notes.append((kind, data))
    harness.store.update_site(
        harness.site.id, caches=[{"name": "down", "driver": "squid", "address": cache.address}]
    )
    harness.purger.reload_sites()
    try:
        yield cache, notes
    finally:
        cache.close()


async def test_a_cache_that_goes_down_and_back_is_told_once_each(
    harness: Harness, down: tuple[HungCache, list[tuple[str, dict[str, Any]]]]
) -> None:
    cache, notes = down
    harness.commit("write", "a.txt")
    await harness.until(lambda: notes, what="cache_unreachable")
    start = cache.accepted
    await harness.until(lambda: cache.accepted >= start + 3, what="a few more probes")
    assert [k for k, _ in notes] == ["cache_unreachable"], notes  # once, not per probe
    assert notes[0][1]["cache"] == "down" and notes[0][1]["site"] == harness.site.name
    cache.set_mode("serve")
    await harness.until(lambda: len(notes) >= 2, what="cache_reachable")
    assert [k for k, _ in notes] == ["cache_unreachable", "cache_reachable"], notes


async def test_changes_to_one_url_while_its_cache_is_down_hold_few_rows(
    harness: Harness, down: tuple[HungCache, list[tuple[str, dict[str, Any]]]]
) -> None:
    cache, _ = down
    harness.commit("write", "hot.json")
    # its gate opens after TRIP_AFTER tries (2 URLs: the site's base URL and its alias)
    await harness.until(lambda: cache.accepted >= 6, what="the cache's gate opening")
    for _ in range(REWRITES):
        harness.commit("write", "hot.json")
    # a positive sync point: every change was taken (planned and queued) when its last one is
    await harness.until(lambda: not harness.purger._released, what="the intake drained")
    rows = harness.store.queued_purges()
    # the item tried when the gate opened, and one more per probe at most (each probe takes the
    # waiting item with it); not one per change
    assert rows <= 10, rows
    cache.set_mode("serve")
    await harness.until(lambda: harness.store.queued_purges() == 0, what="the queue worked off")
