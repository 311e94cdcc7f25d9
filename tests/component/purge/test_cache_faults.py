"""Faulty caches against real ones: a hung cache delays no other, a cache that refuses us is
kept and probed until its ACL is fixed, a Varnish without REFRESH falls back to PURGE, a bad
address is a configuration error, an item that never confirms is given up with an event, and
big bodies are hashed as they stream."""

from __future__ import annotations

import dataclasses
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest
from tests.component.purge.conftest import HOST, Harness

from relaysync.purge import purger as purger_module
from relaysync.purge.budget import budgeted
from relaysync.purge.confirm import run_item
from relaysync.purge.drivers import make_driver
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.site import CacheSpec
from relaysync.testing.caches import NGINX_CONF, VARNISH_VCL, Cache, cache_base_dir

pytestmark = pytest.mark.anyio

CONCURRENCY = 4  # the per-cache limit is half of it: 2
HUNG_ITEMS = 20


@pytest.fixture
def purger_options(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    # a held request stays held (no timeout) until the test drops it: ordering, not timing
    monkeypatch.setattr(purger_module, "REQUEST_TIMEOUT_S", 120.0)
    return {
        "concurrency": CONCURRENCY,
        "probe_min_s": 0.05,
        "probe_max_s": 0.5,
        "refused_probe_s": 0.2,
        "max_attempts": 3,
    }


class HungCache:
    """A test-made cache on loopback: "hold" accepts and never answers, "drop" closes each
    connection at once, "serve" answers PURGE 200 and anything else 404."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.mode = "hold"
        self.held: list[socket.socket] = []
        self.accepted = 0
        self.max_held = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with self.lock:
                self.accepted += 1
                if self.mode == "hold":
                    self.held.append(conn)
                    self.max_held = max(self.max_held, len(self.held))
                    continue
            if self.mode == "drop":
                conn.close()
            else:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            status = b"200 OK" if data.startswith(b"PURGE ") else b"404 Not Found"
            conn.sendall(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )

    def set_mode(self, mode: str) -> None:
        """Switch mode; the connections held so far are dropped unless it stays "hold"."""
        with self.lock:
            self.mode = mode
            if mode != "hold":
                for conn in self.held:
                    conn.close()
                self.held.clear()

    def close(self) -> None:
        self.set_mode("drop")
        self.sock.close()


@pytest.fixture
def hung() -> Iterator[HungCache]:
    cache = HungCache()
    try:
        yield cache
    finally:
        cache.close()


def _with_caches(harness: Harness, caches: list[dict[str, Any]]) -> None:
    harness.store.update_site(harness.site.id, caches=caches)
    harness.purger.reload_sites()


def _farm_caches(harness: Harness) -> list[dict[str, Any]]:
    return [{"name": k, "driver": k, "address": c.address} for k, c in harness.farm.caches.items()]


async def _healthy_round(harness: Harness, rel: str) -> None:
    """A change on every real cache, worked to its end: a sync point for the purger's loop."""
    await harness.later_change_worked(rel)


async def test_a_hung_cache_delays_no_other_and_gets_one_probe_at_a_time(
    harness: Harness, hung: HungCache
) -> None:
    hung_spec = {"name": "hung", "driver": "http", "address": hung.address}
    _with_caches(harness, [*_farm_caches(harness), hung_spec])
    site = harness.purger.site_by_name(harness.site.name)
    assert site is not None
    only_hung = dataclasses.replace(site, caches=(site.caches[-1],))
    urls = [f"http://{HOST}/{site.root}/missing-{i}.txt" for i in range(HUNG_ITEMS)]
    await harness.purger.submit(only_hung, urls)
    await harness.until(lambda: len(hung.held) >= 2, what="the hung cache holding 2 requests")

    # every real cache gets a later change done while the hung cache holds its requests
    await _healthy_round(harness, "while-hung.txt")
    assert hung.max_held == 2  # its own share only, whatever the overall concurrency (4)
    assert not [r for r in harness.results if r.item.cache == "hung"]

    # it fails in a row: its gate opens, and from then one probe at a time
    hung.set_mode("drop")
    gate = harness.purger._gates[hung.address]
    await harness.until(lambda: gate.open, what="the hung cache's gate open")
    hung.set_mode("hold")
    await harness.until(lambda: len(hung.held) >= 1, what="a probe of the hung cache")
    await _healthy_round(harness, "while-open.txt")
    assert len(hung.held) == 1  # not its whole backlog: one probe, nothing beside it
    assert sum(key[1] == "hung" for key in harness.purger._busy) == 1  # the rest are queued

    # it answers again: the probe succeeds, the gate closes, its backlog drains
    hung.set_mode("serve")
    await harness.until(
        lambda: {r.item.url for r in harness.results if r.item.cache == "hung"} >= set(urls),
        what="the hung cache's backlog done once it answers",
    )
    assert {r.status for r in harness.results if r.item.url in urls} == {"purged"}


NO_REFRESH_VCL = VARNISH_VCL.replace(' || req.method == "REFRESH"', "").replace(
    """    if (req.method == "REFRESH") {
        set req.method = "GET";
        set req.hash_always_miss = true;
    }
""",
    "",
)

STATIC_NGINX = """daemon off;
master_process on;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server { listen 127.0.0.1:@PORT@; root @DOCROOT@; }
}
"""


@pytest.fixture
def varnish_without_refresh(harness: Harness) -> Iterator[Cache]:
    """A Varnish whose VCL knows no REFRESH, in front of an nginx serving the docroot: the
    builtin VCL passes REFRESH on, and nginx answers 405."""
    assert "REFRESH" not in NO_REFRESH_VCL
    base = cache_base_dir()
    conf = STATIC_NGINX.replace("@DOCROOT@", str(harness.farm.docroot))
    origin = Cache("nginx", base / "origin", 0, conf=conf).start()
    try:
        varnish = Cache("varnish", base / "varnish", origin.port, conf=NO_REFRESH_VCL).start()
        try:
            yield varnish
        finally:
            varnish.stop()
    finally:
        origin.stop()


async def test_refresh_answered_405_falls_back_to_purge(
    harness: Harness, varnish_without_refresh: Cache
) -> None:
    _with_caches(
        harness, [{"name": "v", "driver": "varnish", "address": varnish_without_refresh.address}]
    )
    port, path = varnish_without_refresh.port, harness.url_path("r405.txt")
    harness.write("r405.txt", b"one")
    status, _, _ = await anyio.to_thread.run_sync(_get, port, path)
    assert status == 200
    harness.write("r405.txt", b"two")
    harness.commit("write", "r405.txt")
    url = f"http://{HOST}{path}"
    await harness.until(
        lambda: [r for r in harness.results if r.item.url == url], what="the result for r405.txt"
    )
    result = next(r for r in harness.results if r.item.url == url)
    assert (result.status, result.confirmed) == ("purged", True), result.detail
    assert (await anyio.to_thread.run_sync(_get, port, path))[:2] == (200, b"two")


def _get(port: int, path: str) -> tuple[int, bytes, dict[str, str]]:
    from relaysync.testing.caches import http_get

    return http_get(port, path, host=HOST)


REFUSING_NGINX = NGINX_CONF.replace("127.0.0.1/32 1;", "127.0.0.1/32 0;").replace(
    "allow 127.0.0.1;\n", ""
)


@pytest.fixture
def refusing_nginx(harness: Harness) -> Iterator[Cache]:
    """An nginx whose ACL does not let the master purge (nor refresh in one request)."""
    assert REFUSING_NGINX != NGINX_CONF
    base = cache_base_dir()
    cache = Cache("nginx", base / "nginx", harness.farm.origin.port, conf=REFUSING_NGINX).start()
    try:
        yield cache
    finally:
        cache.stop()


async def test_a_refused_purge_is_kept_until_the_acl_is_fixed(
    harness: Harness, refusing_nginx: Cache
) -> None:
    _with_caches(harness, [{"name": "n", "driver": "nginx", "address": refusing_nginx.address}])
    notes: list[tuple[str, dict[str, object]]] = []
    harness.purger.notify = lambda kind, data: notes.append((kind, data))
    port, path = refusing_nginx.port, harness.url_path("acl.txt")
    harness.write("acl.txt", b"one")
    await anyio.to_thread.run_sync(_get, port, path)
    await anyio.to_thread.run_sync(_get, port, path)
    harness.write("acl.txt", b"two")
    harness.commit("write", "acl.txt")
    await harness.until(
        lambda: sum(r.status == "refused" for r in harness.results) >= 3,
        what="refusals of a few probes",
    )
    assert [k for k, _ in notes] == ["purge_refused"]  # told once, not per item or probe
    refused = next(r for r in harness.results if r.status == "refused")
    assert "allow 127.0.0.1;" in refused.detail, refused.detail  # what to fix, and where
    assert harness.store.queued_purges() >= 1  # kept
    assert (await anyio.to_thread.run_sync(_get, port, path))[1] == b"one"

    refusing_nginx.reload(NGINX_CONF)  # the operator fixes the ACL
    await harness.until(
        lambda: _get(port, path)[1] == b"two", what="the cache serving the new bytes"
    )
    await harness.until(
        lambda: any(r.status == "purged" and r.confirmed for r in harness.results),
        what="a confirmed purge",
    )


async def test_an_address_httpx_cannot_use_is_a_configuration_error(harness: Harness) -> None:
    """A cache stored before addresses were checked ("::1:6081"): no bug traceback, no retry
    storm; the item is kept and the operator told once."""
    error = await harness.refused_at_purge(
        {"name": "v6", "driver": "varnish", "address": "::1:6081"}
    )
    assert "[::1]:6081" in error  # says how to write it


class _DynamicOrigin(BaseHTTPRequestHandler):
    """An origin whose body changes on every request: no cache can ever match it."""

    count = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _DynamicOrigin.count += 1
        body = f"now {_DynamicOrigin.count}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_an_item_that_never_confirms_is_given_up_with_an_event(harness: Harness) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DynamicOrigin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        varnish = harness.farm.caches["varnish"]
        harness.store.update_site(
            harness.site.id,
            caches=[{"name": "varnish", "driver": "varnish", "address": varnish.address}],
            origins=[{"url": f"http://127.0.0.1:{server.server_address[1]}"}],
        )
        notes = await harness.submit_one("dynamic.txt")
        await harness.until(lambda: harness.results, what="the item's outcome")
        assert [(r.status, r.attempts) for r in harness.results] == [("failed", 3)]
        assert [k for k, _ in notes] == ["purge_failed"]
        await harness.until(lambda: harness.store.queued_purges() == 0, what="its row dropped")
    finally:
        server.shutdown()
        server.server_close()


BIG_BYTES = 24 * 1024 * 1024
PEAK_BOUND_BYTES = 8 * 1024 * 1024  # a few chunks, not the body (the old code held 2-3 bodies)


async def test_big_bodies_are_hashed_as_they_stream(harness: Harness) -> None:
    harness.write("big.bin", b"1" * BIG_BYTES)
    harness.warm("big.bin")
    harness.write("big.bin", b"2" * BIG_BYTES)
    origins = [harness.farm.origin.url]
    async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
        for kind, cache in harness.farm.caches.items():
            driver = make_driver(CacheSpec(name=kind, driver=kind, address=cache.address), client)  # type: ignore[arg-type]
            item = PurgeItem(
                site_id=1, cache=kind, url=f"http://{HOST}{harness.url_path('big.bin')}"
            )
            tracemalloc.start()
            try:
                status, confirmed = await run_item(driver, client, origins, item)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert confirmed is True, (kind, status)
            assert peak < PEAK_BOUND_BYTES, (kind, peak)


async def test_each_request_of_an_item_is_granted_its_time(harness: Harness) -> None:
    """The item's budget counts every request sent to the cache and to the origin: nginx and
    Squid take one per Accept-Encoding value where the answer varies (docs/caches.md)."""
    harness.write("v.txt", b"one")
    harness.warm("v.txt")
    harness.write("v.txt", b"two")
    origins = [harness.farm.origin.url]
    sent: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
        for kind, cache in harness.farm.caches.items():
            spec = CacheSpec(name=kind, driver=kind, address=cache.address)  # type: ignore[arg-type]
            item = PurgeItem(site_id=1, cache=kind, url=f"http://{HOST}{harness.url_path('v.txt')}")
            with budgeted(15.0, 1_000_000) as budget:
                _, confirmed = await run_item(make_driver(spec, client), client, origins, item)
            assert confirmed is True, kind
            sent[kind] = budget.requests
    assert sent["varnish"] >= 3, sent  # REFRESH, then a GET of the origin and of the cache
    assert sent["nginx"] >= 7 * 2 and sent["squid"] >= 7 * 2, sent  # each value: two at least
