"""Directory listings (a site with `listings`) on real Varnish, nginx and Squid: once a name is
added to or removed from a directory, every cache serves the directory's new listing page. The
origin (Python's http.server) lists a directory that has no index.html, as autoindex does."""

from __future__ import annotations

import pytest
from tests.component.purge.conftest import HOST, Harness

from relaysync.testing.caches import http_get

pytestmark = pytest.mark.anyio

BOUND_S = 5.0  # every cache serves the new listing within this after the origins commit


@pytest.fixture
def listings(harness: Harness) -> Harness:
    harness.site = harness.store.update_site(harness.site.id, listings=True)
    harness.purger.reload_sites()
    return harness


def _origin_listing(harness: Harness, rel: str) -> bytes:
    status, body, _ = http_get(harness.farm.origin.port, harness.url_path(rel), host=HOST)
    assert status == 200, (status, body[:200])
    return body


def _stale_everywhere(harness: Harness, rel: str, name: bytes, *, listed: bool) -> None:
    for kind in harness.farm.caches:
        status, body = harness.get(kind, rel)
        assert status == 200 and (name in body) == listed, (kind, body[:300])


async def test_a_new_file_appears_in_its_directory_listing(listings: Harness) -> None:
    """Users saw the directory without the new release on every cache, for the cache's TTL."""
    h = listings
    h.write("pub/v1.tar.gz", b"v1")
    h.warm("pub/")
    h.write("pub/v2.tar.gz", b"v2")
    _stale_everywhere(h, "pub/", b"v2.tar.gz", listed=False)  # the caches hold the old listing
    h.commit("write", "pub/v2.tar.gz")
    want = _origin_listing(h, "pub/")
    assert b"v2.tar.gz" in want
    await h.until_served("pub/", (200, want), timeout_s=BOUND_S)


async def test_a_deleted_file_leaves_its_directory_listing(listings: Harness) -> None:
    """The listing kept linking the deleted file, which answered 404."""
    h = listings
    h.write("pub/keep.txt", b"keep")
    h.write("pub/old.txt", b"old")
    h.warm("pub/")
    (h.folder / "pub" / "old.txt").unlink()
    _stale_everywhere(h, "pub/", b"old.txt", listed=True)
    h.commit("delete", "pub/old.txt")
    want = _origin_listing(h, "pub/")
    assert b"old.txt" not in want and b"keep.txt" in want
    await h.until_served("pub/", (200, want), timeout_s=BOUND_S)


async def test_a_new_directory_appears_in_the_site_roots_listing(listings: Harness) -> None:
    """The site root's listing is the path prefix itself (`/<prefix>/`)."""
    h = listings
    h.write("readme.txt", b"r")
    h.warm("")
    (h.folder / "2026").mkdir()
    _stale_everywhere(h, "", b"2026/", listed=False)
    h.commit("mkdir", "2026")
    want = _origin_listing(h, "")
    assert b"2026/" in want
    await h.until_served("", (200, want), timeout_s=BOUND_S)


async def test_a_rename_refreshes_both_directories_listings(listings: Harness) -> None:
    h = listings
    h.write("incoming/r.iso", b"iso")
    h.write("pub/keep.txt", b"keep")
    h.warm("incoming/")
    h.warm("pub/")
    (h.folder / "incoming" / "r.iso").rename(h.folder / "pub" / "r.iso")
    h.commit("rename", "incoming/r.iso", new_path="pub/r.iso")
    for rel, listed in (("incoming/", False), ("pub/", True)):
        want = _origin_listing(h, rel)
        assert (b"r.iso" in want) == listed
        await h.until_served(rel, (200, want), timeout_s=BOUND_S)
