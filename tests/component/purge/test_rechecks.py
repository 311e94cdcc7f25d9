"""A fetch that read the origin before a change and ends after the URL's confirmed refresh
stores the old copy over the new one (nginx keeps whichever fetch ends last). The purger looks
at nginx's confirmed URLs again later (purge/recheck.py): a copy older than the one confirmed is
refreshed again, unless the origin moved on too (a change not every origin has committed is
left to its own item). Real Varnish, nginx and Squid in front of an origin that holds chosen
answers back."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from tests.component.purge.conftest import HOST, Harness

from relaysync.testing.caches import DELAY_HEADER, http_get

pytestmark = pytest.mark.anyio

RECHECK_S = (1.0, 8.0)  # looks after a confirm; an old copy landing later is seen at the second
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


async def _old_listing_lands_after_the_refresh(
    h: Harness, then: Callable[[], None] = lambda: None
) -> bytes:
    """Each cache fetches `pub/` slowly: the fetch reads the listing with a.txt only and is
    held; then b.txt is written and committed, and once its listing refresh is confirmed on
    nginx, `then` runs and the slow fetches end. Return the listing the origin served
    after b.txt."""
    h.write("pub/a.txt", b"a")
    before = h.farm.origin.late.read
    name = f"held-{uuid.uuid4().hex}"
    slow = [
        threading.Thread(
            target=http_get,
            args=(cache.port, h.url_path("pub/")),
            kwargs={"host": HOST, "headers": {DELAY_HEADER: name}},
        )
        for cache in h.farm.caches.values()
    ]
    for thread in slow:
        thread.start()
    try:
        await h.until(  # each cache's fetch has read the old listing and is held
            lambda: h.farm.origin.late.read >= before + len(slow), what="the slow fetches' reads"
        )
        h.write("pub/b.txt", b"b")
        h.commit("write", "pub/b.txt")
        status, want, _ = http_get(h.farm.origin.port, h.url_path("pub/"), host=HOST)
        assert status == 200 and b"b.txt" in want
        listing = f"http://{HOST}{h.url_path('pub/')}"
        await h.until(  # the listing's refresh confirmed on nginx while the fetches wait (on
            # Varnish and Squid a late fetch landing first is refreshed over as usual)
            lambda: any(
                r.item.url == listing and r.item.cache == "nginx" and r.confirmed for r in h.results
            ),
            what="nginx's confirmed refresh of the listing",
        )
        then()
    finally:
        h.farm.origin.late.release(name)
        for thread in slow:
            await anyio.to_thread.run_sync(thread.join, 30.0)
    assert not any(thread.is_alive() for thread in slow)
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
    """The origin changes again (c.txt, not committed) before the old copy lands: a look sees
    the origin moved on and does not refresh (c.txt is not committed on every origin); the
    commit's own item does."""
    h = listings
    looked = h.purger.rechecks.moved
    # c.txt on the origin before the old copy lands, not committed: no purge may serve it yet
    await _old_listing_lands_after_the_refresh(h, lambda: h.write("pub/c.txt", b"c"))
    await h.until(lambda: h.purger.rechecks.moved > looked, what="nginx's look", timeout_s=30.0)
    assert _stale_rows(h) == []
    status, body = h.get("nginx", "pub/")
    assert status == 200 and b"a.txt" in body and b"b.txt" not in body, body  # the late copy
    h.commit("write", "pub/c.txt")
    _, want, _ = http_get(h.farm.origin.port, h.url_path("pub/"), host=HOST)
    assert b"c.txt" in want
    await h.until_served("pub/", (200, want), timeout_s=BOUND_S)
