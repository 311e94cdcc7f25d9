"""End to end: what a directory delete removes from a target stops being served by every cache,
whether or not the job log knows the files (a rename into the directory leaves no row under
its name), and a file delete bans nothing on Varnish (only its query-string variants, with
query_variants on). A directory moved out of the source's tree
is one delete of the directory; `rm -rf` is journaled one name at a time."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relaysync.testing.caches import Cache, CacheFarm, Origin, cache_base_dir, http_get
from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration

HOST = "www.example.com"
PURGED_S = 30.0  # generous: the purge itself takes milliseconds
FILES = ("a.html", "sub/b.html", "sub/deeper/c.css")
FILE_DELETES = 20


def _site(fleet: Fleet, mapping: dict[str, Any], caches: dict[str, Cache], **extra: Any) -> str:
    name = f"site-{mapping['name']}"
    r = fleet.cluster.api.post(
        "/api/sites",
        json={
            "name": name,
            "provider": "acme",
            "mapping": mapping["name"],
            "base_urls": [f"http://{HOST}"],
            "caches": [
                {"name": kind, "driver": kind, "address": c.address} for kind, c in caches.items()
            ],
            **extra,
        },
    )
    assert r.status_code == 201, r.text
    return name


def _farm_site(fleet: Fleet, farm: CacheFarm, mapping: dict[str, Any], dst: Path) -> str:
    """A site on the session's three caches; returns its URL prefix (the origin serves `dst`)."""
    prefix = f"/{mapping['name']}-removed/"
    (farm.docroot / prefix.strip("/")).symlink_to(dst)
    _site(
        fleet,
        mapping,
        farm.caches,
        path_prefix=prefix,
        origins=[{"server": "t1", "url": farm.origin.url}],
    )
    return prefix


def _renamed_in(fleet: Fleet, how: str) -> tuple[dict[str, Any], Path, Path]:
    """A mapping whose files reach old/... by a rename on the source: of their directory, or of
    each file into it. The job log keeps a rename's old path only."""
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    stage = src / "stage"
    for rel in FILES:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(f"cached {rel}\n")
    if how == "file":
        for rel in FILES:
            (src / "old" / rel).parent.mkdir(parents=True, exist_ok=True)
    fleet.wait_converged(src, dsts)
    if how == "directory":
        stage.rename(src / "old")
    else:
        for rel in FILES:
            (stage / rel).rename(src / "old" / rel)
    fleet.wait_converged(src, dsts)
    return mapping, src, dsts[0]


def _served(farm: CacheFarm, url: str, want_status: int) -> bool:
    return all(http_get(c.port, url, host=HOST)[0] == want_status for c in farm.caches.values())


def _purge_rows(fleet: Fleet, site: str) -> list[dict[str, Any]]:
    rows = fleet.cluster.api.get("/api/purges", params={"site": site, "limit": 1000}).json()
    return list(rows)


@pytest.mark.parametrize("how", ["directory", "file"])
def test_a_directory_removed_after_a_rename_into_it_is_not_served_from_any_cache(
    fleet: Fleet, cache_farm: CacheFarm, how: str
) -> None:
    mapping, src, dst = _renamed_in(fleet, how)
    prefix = _farm_site(fleet, cache_farm, mapping, dst)
    for rel in FILES:
        url = f"{prefix}old/{rel}"
        wait_until(
            lambda u=url: _served(cache_farm, u, 200),
            timeout_s=CONVERGE_TIMEOUT_S,
            what=f"{url} cached",
        )
    # Moved out of the tree: one delete of old (`rm -rf` is journaled one name at a time).
    (src / "old").rename(src.parent / "trash")
    fleet.wait_converged(src, [dst])
    for rel in FILES:  # nginx and Squid kept serving them: the job log knew no path under old/
        url = f"{prefix}old/{rel}"
        wait_until(
            lambda u=url: _served(cache_farm, u, 404),
            timeout_s=PURGED_S,
            what=f"every cache answers 404 for {url}",
        )


@pytest.fixture
def own_varnish(fleet: Fleet) -> Iterator[tuple[dict[str, Any], Path, Path, Cache, str]]:
    """A mapping whose site has a Varnish of its own, whose ban counter no other test moves."""
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    base = cache_base_dir()
    origin = Origin(dsts[0]).start()
    cache = Cache("varnish", base / "varnish", origin.port).start()
    try:
        name = _site(
            fleet,
            mapping,
            {"varnish": cache},
            origins=[{"server": "t1", "url": origin.url}],
        )
        yield mapping, src, dsts[0], cache, name
    finally:
        cache.stop()
        origin.stop()


def _bans_added(cache: Cache) -> int:
    out = subprocess.run(
        ["varnishstat", "-n", str(cache.dir / "wd"), "-1", "-f", "MAIN.bans_added"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return int(out.split()[1])


def test_file_deletes_ban_nothing_on_varnish(fleet: Fleet, own_varnish: Any) -> None:
    """By default (query_variants off, opt-in) a file delete bans nothing: only a directory."""
    _, src, dst, cache, site = own_varnish
    for i in range(FILE_DELETES):
        (src / f"f{i}.html").write_text(f"file {i}\n")
    (src / "dir").mkdir()
    (src / "dir" / "x.html").write_text("x\n")
    fleet.wait_converged(src, [dst])
    before = _bans_added(cache)
    for i in range(FILE_DELETES):
        (src / f"f{i}.html").unlink()
    fleet.wait_converged(src, [dst], timeout_s=CONVERGE_TIMEOUT_S)
    wait_until(
        lambda: (
            {r["url"] for r in _purge_rows(fleet, site) if r["action"] == "purge"}
            >= {f"http://{HOST}/f{i}.html" for i in range(FILE_DELETES)}
        ),
        timeout_s=PURGED_S,
        what="a purge of every deleted file",
    )
    subprocess.run(["rm", "-rf", str(src / "dir")], check=True)  # a directory is still banned
    wait_until(
        lambda: any(r["action"] == "ban" for r in _purge_rows(fleet, site)),
        timeout_s=PURGED_S,
        what="the directory's ban",
    )
    bans = [r["url"] for r in _purge_rows(fleet, site) if r["action"] == "ban"]
    assert bans == [f"http://{HOST}/dir/"], bans  # 20 file deletes made 40 bans before
    assert _bans_added(cache) - before == 1


def test_file_deletes_ban_only_their_query_variants_on_varnish(
    fleet: Fleet, own_varnish: Any
) -> None:
    """Twenty file deletes made 40 bans (/f.html/, twice with the strict form); now each bans
    only its query-string variants, `/f.html?` (docs/caches.md), and a directory its prefix,
    once the site turns query_variants on."""
    _, src, dst, cache, site = own_varnish
    r = fleet.cluster.api.patch(f"/api/sites/{site}", json={"query_variants": True})
    assert r.status_code == 200 and r.json()["query_variants"] is True, r.text
    for i in range(FILE_DELETES):
        (src / f"f{i}.html").write_text(f"file {i}\n")
    (src / "dir").mkdir()
    (src / "dir" / "x.html").write_text("x\n")
    fleet.wait_converged(src, [dst])
    variants = [f"http://{HOST}/f{i}.html?" for i in range(FILE_DELETES)]

    def bans_of_each(n: int) -> bool:  # each file's variant ban done n times
        bans = Counter(_ban_urls(fleet, site))
        return all(bans[u] >= n for u in variants)

    wait_until(lambda: bans_of_each(1), timeout_s=PURGED_S, what="the writes' variant bans")
    x_variants = f"http://{HOST}/dir/x.html?"  # its write's ban too, before counting (a race)
    wait_until(
        lambda: x_variants in _ban_urls(fleet, site), timeout_s=PURGED_S, what="dir/x.html's ban"
    )
    before = _bans_added(cache)
    for i in range(FILE_DELETES):
        (src / f"f{i}.html").unlink()
    fleet.wait_converged(src, [dst], timeout_s=CONVERGE_TIMEOUT_S)
    wait_until(
        lambda: (
            {r["url"] for r in _purge_rows(fleet, site) if r["action"] == "purge"}
            >= {f"http://{HOST}/f{i}.html" for i in range(FILE_DELETES)}
        ),
        timeout_s=PURGED_S,
        what="a purge of every deleted file",
    )
    wait_until(lambda: bans_of_each(2), timeout_s=PURGED_S, what="the deletes' variant bans")
    subprocess.run(["rm", "-rf", str(src / "dir")], check=True)  # a directory is still banned
    prefix = f"http://{HOST}/dir/"
    wait_until(
        lambda: prefix in _ban_urls(fleet, site), timeout_s=PURGED_S, what="the directory's ban"
    )
    bans = _ban_urls(fleet, site)
    assert [u for u in bans if not u.endswith("?")] == [prefix], bans  # no prefix of a file
    # one per deleted file, and the directory's prefix (dir/x.html's variants: one more)
    added = _bans_added(cache) - before
    assert FILE_DELETES + 1 <= added <= FILE_DELETES + 2, (added, Counter(bans))


def _ban_urls(fleet: Fleet, site: str) -> list[str]:
    return [r["url"] for r in _purge_rows(fleet, site) if r["action"] == "ban"]
