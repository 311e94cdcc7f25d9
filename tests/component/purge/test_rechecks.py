"""A fetch that read the origin before a change and ends after the URL's confirmed refresh
stores the old copy over the new one (nginx keeps whichever fetch ends last). The purger looks
at nginx's confirmed URLs again later (purge/recheck.py): a copy older than the one confirmed is
refreshed again, unless the origin moved on too (a change not every origin has committed is
left to its own item). Real Varnish, nginx and Squid in front of an origin that holds chosen
answers back."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from tests.component.purge.conftest import HOST, Harness

from relaysync.testing.caches import DELAY_HEADER, http_get

pytestmark = pytest.mark.anyio

LATE_S = 2.0  # the slow fetches answer this long after they read the listing
RECHECK_S = (LATE_S + 2.0, 8.0)  # the first look comes after they land (margin for load)
BOUND_S = 40.0  # generous: both rounds and a refresh again, on a loaded machine


@pytest.fixture
def purger_options() -> dict[str, Any]:
    return {"recheck_after_s": RECHECK_S}


@pytest.fixture
def listings(harness: Harness) -> Harness:
    """With listings, and without the alias: nginx keys its copies by path alone, so the
    alias's refresh would refresh the same copy again, later."""
    harness.site = harness.store.update_site(harness.site.id, listings=True, aliases=[])
    harness.purger.reload_sites()
    return harness


async def _old_listing_lands_after_the_refresh(h: Harness) -> bytes:
    """Each cache fetches `pub/` slowly: the fetch reads the listing with a.txt only, then
    b.txt is written and committed, its listing refresh confirmed on every cache, and only
    then the slow fetches end. Return the listing the origin serves after b.txt."""
    h.write("pub/a.txt", b"a")
    before = h.farm.origin.late.read
    slow = [
        threading.Thread(
            target=http_get,
            args=(cache.port, h.url_path("pub/")),
            kwargs={"host": HOST, "headers": {DELAY_HEADER: str(LATE_S)}},
        )
        for cache in h.farm.caches.values()
    ]
    for thread in slow:
        thread.start()
    await h.until(  # each cache's fetch has read the old listing and is held
        lambda: h.farm.origin.late.read >= before + len(slow), what="the slow fetches' reads"
    )
    h.write("pub/b.txt", b"b")
    h.commit("write", "pub/b.txt")
    status, want, _ = http_get(h.farm.origin.port, h.url_path("pub/"), host=HOST)
    assert status == 200 and b"b.txt" in want
    listing = f"http://{HOST}{h.url_path('pub/')}"
    await h.until(  # the listing's refresh, confirmed on every cache before the fetches end
        lambda: (
            {r.item.cache for r in h.results if r.item.url == listing and r.confirmed}
            >= set(h.farm.caches)
        ),
        what="every cache's confirmed refresh of the listing",
    )
    for thread in slow:
        thread.join(timeout=30.0)
    return want


def _stale_rows(h: Harness) -> list[tuple[str, str, str]]:
    return [(r.item.cache, r.item.url, r.detail) for r in h.results if r.status == "stale"]


async def test_an_old_copy_that_lands_after_the_refresh_is_refreshed_again(
    listings: Harness,
) -> None:
    """Without the recheck nginx served the listing without b.txt for its TTL (1 h)."""
    h = listings
    want = await _old_listing_lands_after_the_refresh(h)
    await h.until_served("pub/", (200, want), timeout_s=BOUND_S)
    assert [cache for cache, _, _ in _stale_rows(h)] == ["nginx"], _stale_rows(h)
    await h.until(  # and the purge log says so
        lambda: any(
            r.cache == "nginx" and r.status == "stale" and "recheck" in r.detail
            for r in h.store.purge_log(site=h.site.id)
        ),
        what="nginx's stale copy in the purge log",
    )


async def test_a_change_not_yet_committed_is_left_to_its_own_item(listings: Harness) -> None:
    """The old copy lands, then the origin changes again before the first look: the look sees
    the origin moved on and does not refresh (c.txt is not committed on every origin); the
    commit's own item does."""
    h = listings
    looked = h.purger.rechecks.moved
    await _old_listing_lands_after_the_refresh(h)
    h.write("pub/c.txt", b"c")  # on the origin, not committed: no purge may serve it yet
    await h.until(lambda: h.purger.rechecks.moved > looked, what="nginx's look", timeout_s=30.0)
    assert _stale_rows(h) == []
    status, body = h.get("nginx", "pub/")
    assert status == 200 and b"a.txt" in body and b"b.txt" not in body, body  # the late copy
    h.commit("write", "pub/c.txt")
    _, want, _ = http_get(h.farm.origin.port, h.url_path("pub/"), host=HOST)
    assert b"c.txt" in want
    await h.until_served("pub/", (200, want), timeout_s=BOUND_S)
