"""End to end: a write on the source reaches the target, then Varnish in front of it serves it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.caches import Cache, Origin, cache_base_dir, http_get
from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration

HOST = "www.example.com"


@pytest.fixture
def varnish_site(fleet: Fleet) -> Iterator[tuple[Path, Path, Cache, dict]]:
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    base = cache_base_dir()
    origin = Origin(dsts[0]).start()
    cache = Cache("varnish", base / "varnish", origin.port).start()
    try:
        r = fleet.cluster.api.post(
            "/api/sites",
            json={
                "name": f"site-{mapping['name']}",
                "provider": "acme",
                "mapping": mapping["name"],
                "base_urls": [f"http://{HOST}"],
                "caches": [{"name": "varnish", "driver": "varnish", "address": cache.address}],
                "origins": [{"server": "t1", "url": origin.url}],
            },
        )
        assert r.status_code == 201, r.text
        yield src, dsts[0], cache, r.json()
    finally:
        cache.stop()
        origin.stop()


def test_write_on_source_is_served_by_varnish(fleet: Fleet, varnish_site) -> None:  # type: ignore[no-untyped-def]
    src, dst, cache, site = varnish_site
    (src / "page.txt").write_bytes(b"version 1")
    wait_until(
        lambda: (dst / "page.txt").exists() and (dst / "page.txt").read_bytes() == b"version 1",
        timeout_s=30,
        what="target commit",
    )
    wait_until(
        lambda: http_get(cache.port, "/page.txt", host=HOST)[1] == b"version 1",
        timeout_s=CONVERGE_TIMEOUT_S,
        what="varnish serves version 1",
    )
    # cached (so that version 2 showing up below is the purger's doing, not a pass): polled, as
    # the purger's own refresh of version 1 may still be between its PURGE and its GET
    wait_until(
        lambda: http_get(cache.port, "/page.txt", host=HOST)[2].get("x-cache") == "HIT",
        timeout_s=CONVERGE_TIMEOUT_S,
        what="varnish serves version 1 from its cache",
    )
    (src / "page.txt").write_bytes(b"version 2 (longer)")
    started = time.monotonic()
    wait_until(
        lambda: http_get(cache.port, "/page.txt", host=HOST)[1] == b"version 2 (longer)",
        timeout_s=CONVERGE_TIMEOUT_S,
        interval_s=0.005,
        what="varnish serves version 2",
    )
    elapsed_ms = (time.monotonic() - started) * 1000
    print(f"close() -> varnish serves the new bytes: {elapsed_ms:.0f} ms")

    def confirmed() -> bool:
        # "refreshed", or "purged" when a confirm met the old copy and the purger fell back to
        # PURGE + GET (confirm.py): either way the log says the cache was checked afterwards
        rows = fleet.cluster.api.get("/api/purges", params={"site": site["name"]}).json()
        return any(r["status"] in ("refreshed", "purged") and r["confirmed"] for r in rows)

    wait_until(confirmed, timeout_s=CONVERGE_TIMEOUT_S, what="a confirmed refresh in /api/purges")


def test_names_with_sub_delims_are_refreshed_as_browsers_send_them(  # type: ignore[no-untyped-def]
    fleet: Fleet, cache_farm
) -> None:
    """`photo (1).jpg` is requested as /photo%20(1).jpg: Varnish and Squid key on that raw
    target, so that is the URL to refresh and to confirm (the session's caches, all three)."""
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    prefix = f"/{mapping['name']}-forms/"
    (cache_farm.docroot / prefix.strip("/")).symlink_to(dsts[0])  # the origin serves the target
    r = fleet.cluster.api.post(
        "/api/sites",
        json={
            "name": f"site-{mapping['name']}-forms",
            "provider": "acme",
            "mapping": mapping["name"],
            "base_urls": [f"http://{HOST}"],
            "path_prefix": prefix,
            "caches": [
                {"name": kind, "driver": kind, "address": c.address}
                for kind, c in cache_farm.caches.items()
            ],
            "origins": [{"server": "t1", "url": cache_farm.origin.url}],
        },
    )
    assert r.status_code == 201, r.text
    names = {"photo (1).jpg": "photo%20(1).jpg", "c++.html": "c++.html"}
    for name in names:
        (src / name).write_bytes(b"version 1")
    for name, target in names.items():
        for cache in cache_farm.caches.values():
            wait_until(
                lambda c=cache, t=target: (
                    http_get(c.port, prefix + t, host=HOST)[1] == b"version 1"
                ),
                timeout_s=30,
                what=f"{cache.kind} serves version 1 of {name}",
            )
    for name in names:
        (src / name).write_bytes(b"version 2")
    for name, target in names.items():
        for cache in cache_farm.caches.values():
            wait_until(
                lambda c=cache, t=target: (
                    http_get(c.port, prefix + t, host=HOST)[1] == b"version 2"
                ),
                timeout_s=CONVERGE_TIMEOUT_S,
                what=f"{cache.kind} serves version 2 of {name}",
            )


def _bans_of(fleet: Fleet, site: dict, suffix: str) -> int:
    rows = fleet.cluster.api.get("/api/purges", params={"site": site["name"]}).json()
    return sum(
        1
        for r in rows
        if r["action"] == "ban" and r["status"] == "banned" and r["url"].endswith(suffix)
    )


def test_a_changed_files_query_variants_are_served_new(fleet: Fleet, varnish_site) -> None:  # type: ignore[no-untyped-def]
    """/a.css?v=1 and /a.css?x=2 (cache busters, tracking parameters) are separate objects in
    Varnish: after a write to a.css on the source they serve the new bytes too (a BAN of
    `/a.css?`, in the purge log), and /a.css.map stays cached, once the site turns
    query_variants on (it is off by default)."""
    src, dst, cache, site = varnish_site
    r = fleet.cluster.api.patch(f"/api/sites/{site['name']}", json={"query_variants": True})
    assert r.status_code == 200 and r.json()["query_variants"] is True, r.text
    (src / "a.css.map").write_bytes(b"map 1")
    (src / "a.css").write_bytes(b"css 1")
    wait_until(
        lambda: (dst / "a.css").exists() and (dst / "a.css").read_bytes() == b"css 1",
        timeout_s=30,
        what="target commit",
    )
    # the purger's own work for version 1 (its ban too) is done before the caching below
    wait_until(
        lambda: _bans_of(fleet, site, "/a.css?") == 1,
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the ban of version 1's variants",
    )
    targets = ("/a.css", "/a.css?v=1", "/a.css?x=2", "/a.css.map")
    for target in targets:
        wait_until(
            lambda t=target: http_get(cache.port, t, host=HOST)[2].get("x-cache") == "HIT",
            timeout_s=CONVERGE_TIMEOUT_S,
            what=f"varnish serves {target} from its cache",
        )
    (src / "a.css").write_bytes(b"css 2 (longer)")
    for target in targets[:3]:
        wait_until(
            lambda t=target: http_get(cache.port, t, host=HOST)[1] == b"css 2 (longer)",
            timeout_s=CONVERGE_TIMEOUT_S,
            what=f"varnish serves version 2 of {target}",
        )
    wait_until(
        lambda: _bans_of(fleet, site, "/a.css?") == 2,
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the ban of version 2's variants in /api/purges",
    )
    status, body, headers = http_get(cache.port, "/a.css.map", host=HOST)
    assert (status, body, headers.get("x-cache")) == (200, b"map 1", "HIT")  # no over-purge
