"""End to end: on a site with `listings`, a directory's listing page (the origin lists directories
without an index file, as nginx's autoindex does) follows what the agents replicate into it, on
every cache: a new file, a new directory, a file moved in from another directory, a delete; and
a burst of new files in one directory refreshes its listing far fewer times than it has files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relaysync.testing.caches import CacheFarm, http_get
from relaysync.testing.cluster import ClusterError, wait_until
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

HOST = "www.example.com"
REFRESHED_S = 120.0  # generous: a 100-file burst takes 2-6 s on a quiet host; under coverage and load, many times that
BURST = 100  # new files in one directory at once (200 took 107 s on a loaded 2-core machine)


def _listing_site(fleet: Fleet, farm: CacheFarm) -> tuple[Path, str, str]:
    """A mapping and its site on the session's caches, with listings; (source, URL prefix, site)."""
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    prefix = f"/{mapping['name']}-listings/"
    (farm.docroot / prefix.strip("/")).symlink_to(dsts[0])
    name = f"site-{mapping['name']}"
    r = fleet.cluster.api.post(
        "/api/sites",
        json={
            "name": name,
            "provider": "acme",
            "mapping": mapping["name"],
            "base_urls": [f"http://{HOST}"],
            "path_prefix": prefix,
            "listings": True,
            # the values these tests' GETs send, not the 7 by default: on nginx and Squid each is
            # a request and a fetch per item (27 requests), which a burst on a loaded 2-core
            # machine took minutes to work through (tests/component/purge covers the 7)
            "caches": [
                {
                    "name": kind,
                    "driver": kind,
                    "address": c.address,
                    **({} if kind == "varnish" else {"accept_encodings": ["identity", "gzip"]}),
                }
                for kind, c in farm.caches.items()
            ],
            "origins": [{"server": "t1", "url": farm.origin.url}],
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["listings"] is True
    return src, prefix, name


def _listed(farm: CacheFarm, url: str, name: str, *, listed: bool = True) -> bool:
    """Every cache serves the listing at `url` with (or without) a link to `name`."""
    link = f'href="{name}"'.encode()
    for cache in farm.caches.values():
        status, body, _ = http_get(cache.port, url, host=HOST)
        if status != 200 or (link in body) != listed:
            return False
    return True


def _until_listed(farm: CacheFarm, url: str, name: str, *, listed: bool = True) -> None:
    wait_until(
        lambda: _listed(farm, url, name, listed=listed),
        timeout_s=REFRESHED_S,
        what=f"every cache's listing of {url} {'with' if listed else 'without'} {name}",
    )


def _listing_refreshes(fleet: Fleet, site: str, url: str) -> dict[str, int]:
    rows: list[dict[str, Any]] = fleet.cluster.api.get(
        "/api/purges", params={"site": site, "limit": 1000}
    ).json()
    counts: dict[str, int] = {}
    for row in rows:
        if row["url"] == url and row["action"] == "refresh":
            counts[row["cache"]] = counts.get(row["cache"], 0) + 1
    return counts


def _report(fleet: Fleet, farm: CacheFarm, site: str, url: str, held: Path) -> None:
    """For a timed-out wait: what the target holds, each cache's listing, the purge rows."""
    try:
        print("on the target:", len(list(held.iterdir())), "files")
        for kind, cache in farm.caches.items():
            print(kind, "lists", http_get(cache.port, url, host=HOST)[1].count(b"<li>"), "names")
        rows = fleet.cluster.api.get("/api/purges", params={"site": site, "limit": 1000}).json()
        print(*(r for r in rows if r["url"].endswith(url)), sep="\n")
    except Exception as exc:  # noqa: BLE001 - the wait's own error is the one to raise
        print("report failed:", exc)


def test_listings_follow_what_is_replicated_into_a_directory(
    fleet: Fleet, cache_farm: CacheFarm
) -> None:
    src, prefix, _ = _listing_site(fleet, cache_farm)
    (src / "pub").mkdir()
    (src / "pub" / "v1.tar.gz").write_text("v1\n")
    (src / "incoming").mkdir()
    (src / "incoming" / "r.iso").write_text("iso\n")
    pub = f"{prefix}pub/"
    _until_listed(cache_farm, pub, "v1.tar.gz")  # replicated, and cached by every cache
    (src / "pub" / "v2.tar.gz").write_text("v2\n")
    _until_listed(cache_farm, pub, "v2.tar.gz")
    (src / "pub" / "2027").mkdir()
    _until_listed(cache_farm, pub, "2027/")
    (src / "incoming" / "r.iso").rename(src / "pub" / "r.iso")
    _until_listed(cache_farm, pub, "r.iso")
    _until_listed(cache_farm, f"{prefix}incoming/", "r.iso", listed=False)
    (src / "pub" / "v1.tar.gz").unlink()
    _until_listed(cache_farm, pub, "v1.tar.gz", listed=False)


def test_a_burst_of_new_files_refreshes_the_listing_a_few_times(
    fleet: Fleet, cache_farm: CacheFarm
) -> None:
    src, prefix, site = _listing_site(fleet, cache_farm)
    (src / "burst").mkdir()
    (src / "burst" / "first").write_text("0\n")
    url = f"{prefix}burst/"
    _until_listed(cache_farm, url, "first")
    before = _listing_refreshes(fleet, site, f"http://{HOST}{url}")
    for i in range(BURST):
        (src / "burst" / f"f{i:03}").write_text(f"{i}\n")
    try:
        _until_listed(cache_farm, url, f"f{BURST - 1:03}")
    except ClusterError:
        _report(fleet, cache_farm, site, url, cache_farm.docroot / prefix.strip("/") / "burst")
        raise
    wait_until(
        lambda: all(_listed(cache_farm, url, f"f{i:03}") for i in range(0, BURST, 17)),
        timeout_s=REFRESHED_S,
        what="the whole burst listed",
    )
    made: dict[str, int] = {}

    def each_logged() -> bool:
        # a cache may serve the new listing before its item is done (the other Accept-Encoding
        # variants are still refreshed and confirmed) and logged
        after = _listing_refreshes(fleet, site, f"http://{HOST}{url}")
        made.update({k: after.get(k, 0) - before.get(k, 0) for k in cache_farm.caches})
        return all(n >= 1 for n in made.values())

    wait_until(each_logged, timeout_s=REFRESHED_S, what="each cache's listing refresh logged")
    print(f"listing refreshes for {BURST} new files: {made}")
    assert all(1 <= n <= BURST // 10 for n in made.values()), made  # once per batch, not per file
