"""Query-string variants against real caches: after a change to /a.css, its copies cached as
/a.css?v=1 and /a.css?x=2 are served new on Varnish (a BAN of `/a.css?`) and on an nginx keyed
on the path alone (the configuration docs/caches.md gives for nginx), /a.css.map is left alone,
and a site with query_variants off (null, the default, or false) is planned as before."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
from tests.component.purge.conftest import HOST, Harness

from relaysync.testing.caches import NGINX_CONF, Cache, http_get

pytestmark = pytest.mark.anyio

BOUND_S = 15.0  # every cache serves the new bytes within this (quiet runs: well under 1 s)
VARIANTS = ("a.css", "a.css?v=1", "a.css?x=2")
HIT_HEADERS = {"varnish": "x-cache", "nginx": "x-cache-status", "nginx-uri": "x-cache-status"}
# The operator's nginx fix: every query variant of a path is one cache object (a static origin
# serves the same file whatever the query), so the PURGE or refresh of /a.css reaches them all
NGINX_URI_KEY_CONF = NGINX_CONF.replace("$uri$is_args$args", "$uri")


@pytest.fixture
async def uri_nginx(harness: Harness) -> AsyncIterator[Cache]:
    """An nginx keyed on $uri in front of the farm's origin, added to the harness's site."""
    farm = harness.farm
    cache = Cache("nginx", farm.base / f"nginx-uri-{time.monotonic_ns()}", farm.origin.port)
    cache.conf = NGINX_URI_KEY_CONF
    await anyio.to_thread.run_sync(cache.start)
    try:
        caches = [
            {"name": c.name, "driver": c.driver, "address": c.address} for c in harness.site.caches
        ]
        caches.append({"name": "nginx-uri", "driver": "nginx", "address": cache.address})
        harness.site = harness.store.update_site(harness.site.id, caches=caches)
        harness.purger.reload_sites()
        yield cache
    finally:
        await anyio.to_thread.run_sync(cache.stop)


def _variants_on(harness: Harness) -> None:
    harness.site = harness.store.update_site(harness.site.id, query_variants=True)
    harness.purger.reload_sites()


def _ports(harness: Harness, extra: Cache | None = None) -> dict[str, int]:
    ports = {k: c.port for k, c in harness.farm.caches.items() if k in HIT_HEADERS}
    if extra is not None:
        ports["nginx-uri"] = extra.port
    return ports


def _get(port: int, harness: Harness, rel: str) -> tuple[int, bytes, dict[str, str]]:
    return http_get(port, harness.url_path(rel), host=HOST)


async def _cache_until_hit(harness: Harness, ports: dict[str, int], rels: tuple[str, ...]) -> None:
    """GET each URL through each cache until the cache answers it from its copy."""
    for kind, port in ports.items():
        for rel in rels:
            deadline = time.monotonic() + BOUND_S
            while True:
                _, _, headers = await anyio.to_thread.run_sync(_get, port, harness, rel)
                if headers.get(HIT_HEADERS[kind], "").upper() == "HIT":
                    break
                assert time.monotonic() < deadline, f"{kind} never cached {rel}"
                await anyio.sleep(0.01)


async def _until_served(
    harness: Harness, port: int, rel: str, want: tuple[int, bytes | None]
) -> None:
    deadline = time.monotonic() + BOUND_S
    while True:
        status, body, _ = await anyio.to_thread.run_sync(_get, port, harness, rel)
        if status == want[0] and (want[1] is None or body == want[1]):
            return
        assert time.monotonic() < deadline, f"{rel} on :{port} still {status} {body!r}"
        await anyio.sleep(0.01)


async def test_every_variant_is_served_new_and_the_map_is_not_purged(
    harness: Harness, uri_nginx: Cache
) -> None:
    _variants_on(harness)
    harness.write("a.css", b"body { color: red }")
    harness.write("a.css.map", b"map one")
    ports = _ports(harness, uri_nginx)
    await _cache_until_hit(harness, ports, (*VARIANTS, "a.css.map"))
    harness.write("a.css", b"body { color: blue }")
    harness.commit("write", "a.css")
    for kind in ("varnish", "nginx-uri"):
        for rel in VARIANTS:
            await _until_served(harness, ports[kind], rel, (200, b"body { color: blue }"))
    await _until_served(harness, ports["nginx"], "a.css", (200, b"body { color: blue }"))

    def banned() -> bool:
        return any(
            r.item.cache == "varnish"
            and r.item.action == "ban"
            and r.item.url.endswith("/a.css?")
            and r.status == "banned"
            for r in harness.results
        )

    await harness.until(banned, what="the variants' ban in the results")
    # no over-purge: the map is still Varnish's cached copy (the ban ran before this GET)
    status, body, headers = _get(ports["varnish"], harness, "a.css.map")
    assert (status, body, headers.get("x-cache")) == (200, b"map one", "HIT")

    def logged() -> bool:  # reported like any purge (and retried, were it to fail)
        rows = harness.store.purge_log(site=harness.site.id)
        return any(e.action == "ban" and e.status == "banned" and e.url.endswith("?") for e in rows)

    await harness.until(logged, what="the ban in the purge log")


async def test_a_deleted_files_variants_answer_404(harness: Harness) -> None:
    _variants_on(harness)
    harness.write("gone.css", b"here")
    port = harness.farm.caches["varnish"].port
    variants = ("gone.css", "gone.css?v=1", "gone.css?x=2")
    await _cache_until_hit(harness, {"varnish": port}, variants)
    (harness.folder / "gone.css").unlink()
    harness.commit("delete", "gone.css")
    for rel in variants:
        await _until_served(harness, port, rel, (404, None))


@pytest.mark.parametrize("value", [None, False])
async def test_with_query_variants_off_nothing_is_banned(
    harness: Harness, value: bool | None
) -> None:
    """Off by default (null: every site stored before 0019) and with false."""
    if value is not None:
        harness.site = harness.store.update_site(harness.site.id, query_variants=value)
        harness.purger.reload_sites()
    assert harness.site.query_variants is value
    harness.write("off.css", b"one")
    port = harness.farm.caches["varnish"].port
    await _cache_until_hit(harness, {"varnish": port}, ("off.css", "off.css?v=1"))
    harness.write("off.css", b"two")
    harness.commit("write", "off.css")
    await _until_served(harness, port, "off.css", (200, b"two"))

    def refreshed() -> bool:
        return any(
            r.item.cache == "varnish" and r.item.url.endswith("/off.css") for r in harness.results
        )

    await harness.until(refreshed, what="the refresh of off.css on Varnish")
    # a change's items are queued together before any runs: a ban would be queued or done
    assert not [q for q in harness.store.pending_purges() if q.item.action == "ban"]
    assert not [r for r in harness.results if r.item.action == "ban"]
    assert _get(port, harness, "off.css?v=1")[1] == b"one"  # as before: kept until its TTL


async def test_debians_nginx_module_has_no_partial_key_purge(harness: Harness) -> None:
    """Why nginx gets no variant purge: `PURGE /a.css?*` (ngx_cache_purge 2.4+) is a literal
    key to Debian's 2.3 module. If this fails, the module learnt partial keys: use them."""
    harness.write("p.css", b"one")
    port = harness.farm.caches["nginx"].port
    await _cache_until_hit(harness, {"nginx": port}, ("p.css?v=1",))
    status, _, _ = http_get(port, harness.url_path("p.css?*"), host=HOST, method="PURGE")
    assert status == 404
    _, body, headers = _get(port, harness, "p.css?v=1")
    assert (body, headers.get("x-cache-status")) == (b"one", "HIT")
