"""A fetch that read the origin before a change and ends after the URL's confirmed refresh
stores the old copy over the new one (nginx keeps whichever fetch ends last). The purger looks
at each refreshed URL again later (purge/recheck.py) and refreshes a stale copy again; real
Varnish, nginx and Squid in front of an origin that holds chosen answers back."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from tests.component.purge.conftest import HOST, Harness

from relaysync.testing.caches import DELAY_HEADER, http_get

pytestmark = pytest.mark.anyio

LATE_S = 2.0  # the slow fetches answer this long after they read the listing
RECHECK_S = (LATE_S + 2.0, 10.0)  # the first look comes after they land (margin for load)
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


async def test_a_slow_fetch_that_lands_after_the_refresh_is_refreshed_again(
    listings: Harness,
) -> None:
    """nginx served the listing without the new file for its TTL (1 h), after a refresh that
    was confirmed at once."""
    h = listings
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
    await h.until(  # the listing's refresh, done on every cache (nginx's before its fetch ends)
        lambda: {r.item.cache for r in h.results if r.item.url == listing} >= set(h.farm.caches),
        what="every cache's refresh of the listing",
    )
    for thread in slow:
        thread.join(timeout=30.0)
    await h.until_served("pub/", (200, want), timeout_s=BOUND_S)
    stale = {r.item.cache for r in h.results if r.status == "stale"}
    assert "nginx" in stale, [(r.item.cache, r.item.url, r.status, r.detail) for r in h.results]
    await h.until(  # and the purge log says so
        lambda: any(
            r.cache == "nginx" and r.status == "stale" and "recheck" in r.detail
            for r in h.store.purge_log(site=h.site.id)
        ),
        what="nginx's stale copy in the purge log",
    )
