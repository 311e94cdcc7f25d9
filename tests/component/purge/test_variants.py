"""What a browser or client can get from Varnish, nginx (cache-purge) and Squid after a change:
every Accept-Encoding variant (the origin gzips and sends `Vary: Accept-Encoding`, as nginx
with gzip_vary), every URL under a switched symlink to a directory, a chmod's answer, and the
Host browsers send for a base URL written with its default port."""

from __future__ import annotations

import gzip
import http.client
import os

import anyio
import httpx
import pytest
from tests.component.purge.conftest import HOST, O1, O2, Harness

from relaysync.errors import StaleCopy
from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.purge.confirm import confirm, run_item
from relaysync.purge.drivers import make_driver
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.site import DEFAULT_ACCEPT_ENCODINGS, CacheSpec
from relaysync.purge.urls import parse_url
from relaysync.testing.caches import http_get

pytestmark = pytest.mark.anyio

BOUND_S = 10.0  # every cache serves the new bytes within this after the origins commit
# What clients send ("" = no header: curl, bots), in an order that leaves nginx's main key
# file with a variant other than the purger's own
CLIENTS = ("gzip, deflate, br, zstd", "", "identity", "gzip", "gzip, deflate, br")


def get_as(port: int, path: str, encoding: str, host: str = HOST) -> tuple[int, bytes]:
    """GET as a client sending Accept-Encoding `encoding` ("" = none); the body decoded."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15.0)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        if encoding:
            conn.putheader("Accept-Encoding", encoding)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        if r.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return r.status, body
    finally:
        conn.close()


def warm_variants(harness: Harness, rel: str) -> None:
    for cache in harness.farm.caches.values():
        for encoding in CLIENTS:
            for _ in range(2):
                get_as(cache.port, harness.url_path(rel), encoding)


async def until_every_variant(harness: Harness, rel: str, want: tuple[int, bytes | None]) -> None:
    """Poll each cache under each client's Accept-Encoding until it serves `want`."""
    pending = {(k, e) for k in harness.farm.caches for e in CLIENTS}
    last: dict[tuple[str, str], tuple[int, bytes]] = {}
    with anyio.move_on_after(BOUND_S):
        while pending:
            for kind, encoding in sorted(pending):
                port = harness.farm.caches[kind].port
                got = await anyio.to_thread.run_sync(get_as, port, harness.url_path(rel), encoding)
                last[(kind, encoding)] = got
                if got[0] == want[0] and want[1] in (None, got[1]):
                    pending.discard((kind, encoding))
            await anyio.sleep(0.02)
    assert not pending, f"stale after {BOUND_S} s: { {k: last[k] for k in sorted(pending)} }"


def origin_serves_vary(harness: Harness, rel: str) -> None:
    status, body, headers = http_get(
        harness.farm.origin.port, harness.url_path(rel), headers={"Accept-Encoding": "gzip"}
    )
    assert (status, headers.get("vary"), headers.get("content-encoding")) == (
        200,
        "Accept-Encoding",
        "gzip",
    )


async def test_a_change_reaches_every_accept_encoding_variant(harness: Harness) -> None:
    harness.write("v.txt", b"version one " * 20)
    origin_serves_vary(harness, "v.txt")
    warm_variants(harness, "v.txt")
    harness.write("v.txt", b"version two " * 20)
    harness.commit("write", "v.txt")
    await until_every_variant(harness, "v.txt", (200, b"version two " * 20))


async def test_a_delete_reaches_every_accept_encoding_variant(harness: Harness) -> None:
    harness.write("gone-v.txt", b"here " * 20)
    warm_variants(harness, "gone-v.txt")
    (harness.folder / "gone-v.txt").unlink()
    harness.commit("delete", "gone-v.txt")
    await until_every_variant(harness, "gone-v.txt", (404, None))


@pytest.mark.parametrize("kind", ["nginx", "squid"])
async def test_the_confirm_sees_a_stale_variant(harness: Harness, kind: str) -> None:
    """The confirm asked with the purger's own Accept-Encoding only: a cache whose identity
    copy was still the old one counted as confirmed."""
    harness.write("c.txt", b"old " * 20)
    warm_variants(harness, "c.txt")
    harness.write("c.txt", b"new " * 20)
    cache = harness.farm.caches[kind]
    path = harness.url_path("c.txt")
    for encoding in ("gzip, deflate, zstd", "gzip, deflate, br, zstd"):  # not "identity"
        headers = {"Accept-Encoding": encoding}
        if kind == "nginx":  # PURGE + GET of this variant
            http_get(cache.port, path, host=HOST, headers=headers, method="PURGE")
        else:  # Squid: a no-cache GET replaces this variant
            headers.update({"Cache-Control": "no-cache", "Pragma": "no-cache"})
        http_get(cache.port, path, host=HOST, headers=headers)
    assert get_as(cache.port, path, "identity")[1] == b"old " * 20  # the stale variant
    site = harness.purger.site_by_name(harness.site.name)
    assert site is not None
    spec = next(c for c in site.caches if c.name == kind)
    async with httpx.AsyncClient(timeout=5.0) as client:
        driver = make_driver(spec, client)
        with pytest.raises(StaleCopy):
            await confirm(
                driver, client, [harness.farm.origin.url], parse_url(f"http://{HOST}{path}")
            )


def _report(harness: Harness, record: CommitRecord) -> None:
    for target in (O1, O2):
        harness.purger.on_commit_report(
            CommitReport(
                mapping_id=harness.mapping_id,
                source_node="a" * 64,
                target_node=target,
                watermark=record.seq,
                records=(record,),
            )
        )


def _releases(harness: Harness) -> None:
    for release, names in (("5", ("app.css", "old.js")), ("6", ("app.css", "new.js"))):
        for name in names:
            harness.write(f"releases/{release}/{name}", f"{release}/{name}".encode())
    os.symlink("releases/5", harness.folder / "current")
    for name in ("app.css", "old.js", "new.js"):  # new.js: a cached 404
        harness.warm(f"current/{name}")


async def _until_release_6(harness: Harness) -> None:
    await harness.until_served("current/app.css", (200, b"6/app.css"), timeout_s=BOUND_S)
    await harness.until_served("current/new.js", (200, b"6/new.js"), timeout_s=BOUND_S)
    await harness.until_served("current/old.js", (404, None), timeout_s=BOUND_S)


async def test_a_switched_symlink_to_a_directory_refreshes_every_url_under_it(
    harness: Harness,
) -> None:
    """The atomic deploy `current` -> releases/5 to releases/6: the purger refreshed /current
    and nothing under it."""
    _releases(harness)
    (harness.folder / "current").unlink()
    os.symlink("releases/6", harness.folder / "current")
    root = harness.site.root
    removed = tuple(f"{root}/current/{n}" for n in ("app.css", "new.js", "old.js"))
    _report(
        harness,
        CommitRecord(
            seq=next(harness.seqs), op="symlink", path=f"{root}/current", kind="d", removed=removed
        ),
    )
    await _until_release_6(harness)


async def test_a_link_renamed_over_a_link_to_a_directory_purges_both_trees(
    harness: Harness,
) -> None:
    """`ln -s releases/6 current.tmp && mv -T current.tmp current`: nginx and Squid kept what
    only the old target had (old.js)."""
    _releases(harness)
    os.symlink("releases/6", harness.folder / "current.tmp")
    (harness.folder / "current.tmp").replace(harness.folder / "current")
    root = harness.site.root
    removed = (
        *(f"{root}/current.tmp/{n}" for n in ("app.css", "new.js")),
        *(f"{root}/current/{n}" for n in ("app.css", "old.js")),
    )
    record = CommitRecord(
        seq=next(harness.seqs),
        op="rename",
        path=f"{root}/current.tmp",
        new_path=f"{root}/current",
        kind="d",
        removed=removed,
    )
    _report(harness, record)
    await _until_release_6(harness)


async def test_a_chmod_that_unpublishes_a_file_is_purged(harness: Harness) -> None:
    harness.write("secret.pdf", b"public once")
    harness.warm("secret.pdf")
    os.chmod(harness.folder / "secret.pdf", 0o600)  # the web server answers 403 now
    harness.commit("attr", "secret.pdf")
    await harness.until_served("secret.pdf", (403, None), timeout_s=BOUND_S)


@pytest.mark.parametrize("base", [f"http://{HOST}:80", f"https://{HOST}:443"])
async def test_a_default_port_in_a_base_url_purges_the_host_browsers_send(
    harness: Harness, base: str
) -> None:
    """Browsers omit a default port; the purger sent Host: www.example.com:443 and Varnish
    kept the browsers' copy under the other key."""
    harness.store.update_site(harness.site.id, base_urls=[base], aliases=[])
    harness.purger.reload_sites()
    harness.write("port.txt", b"one")
    harness.warm("port.txt")
    harness.write("port.txt", b"two")
    harness.commit("write", "port.txt")
    await harness.until_served("port.txt", (200, b"two"), timeout_s=BOUND_S)


async def _requests_of_one_refresh(harness: Harness, kind: str, rel: str) -> tuple[int, int]:
    """(requests to the cache, requests to the origin) of one refresh item of `rel`."""
    cache = harness.farm.caches[kind]
    sent = {"cache": 0, "origin": 0}

    async def count(request: httpx.Request) -> None:
        sent["cache" if request.url.port == cache.port else "origin"] += 1

    spec = CacheSpec(name=kind, driver=kind, address=cache.address)  # type: ignore[arg-type]
    url = f"http://{HOST}{harness.url_path(rel)}"
    async with httpx.AsyncClient(timeout=15.0, event_hooks={"request": [count]}) as client:
        done = await run_item(
            make_driver(spec, client),
            client,
            [harness.farm.origin.url],
            PurgeItem(site_id=1, cache=kind, url=url),
        )
    assert done[1] is True, done
    return sent["cache"], sent["origin"]


@pytest.mark.parametrize("kind", ["nginx", "squid"])
async def test_variants_are_swept_only_where_the_answers_vary(harness: Harness, kind: str) -> None:
    """Every URL got the whole sweep (21 requests to nginx, 14 to Squid, 7 to the origin),
    even a page sent without Vary (a directory listing): one refresh and one confirm do."""
    (harness.folder / "d").mkdir()
    harness.write("d/a.txt", b"a")
    for encoding in CLIENTS:
        get_as(harness.farm.caches[kind].port, harness.url_path("d/"), encoding)
    harness.write("d/b.txt", b"b")
    assert await _requests_of_one_refresh(harness, kind, "d/") == (2, 1)  # as before variants
    for encoding in CLIENTS:
        assert (
            b'href="b.txt"'
            in get_as(harness.farm.caches[kind].port, harness.url_path("d/"), encoding)[1]
        )
    harness.write("w.txt", b"one " * 20)
    warm_variants(harness, "w.txt")
    harness.write("w.txt", b"two " * 20)
    cache_requests, origin_requests = await _requests_of_one_refresh(harness, kind, "w.txt")
    encodings = len(DEFAULT_ACCEPT_ENCODINGS[kind])
    assert origin_requests == encodings  # a confirm under each
    assert cache_requests > 2
    for encoding in CLIENTS:  # the item was confirmed: no wait
        assert get_as(harness.farm.caches[kind].port, harness.url_path("w.txt"), encoding) == (
            200,
            b"two " * 20,
        ), encoding
