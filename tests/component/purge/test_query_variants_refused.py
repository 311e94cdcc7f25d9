"""A Varnish whose VCL handles PURGE and REFRESH but not BAN (Varnish's builtin VCL then pipes
BAN to the origin: nginx answers 405, Python's server 501), on a site with query_variants on.
The bans of the files' query-string variants are best-effort: each is recorded failed once with
the fix in its message, never retried or notified, and the files' own refreshes go on within
the usual bound (review s25 D1: a 405 used to refuse the cache's gate and keep every ban queued,
so later refreshes waited behind them; a 501 sent one purge_failed per file)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from tests.component.purge.conftest import HOST, Harness

from relaysync.testing.caches import VARNISH_VCL, Cache, http_get

pytestmark = pytest.mark.anyio

BOUND_S = 15.0  # a refresh is served within this (quiet runs: well under 1 s)
FILES = ("f0.css", "f1.css", "f2.css", "f3.css")
# A static nginx origin: it answers 405 to a method it does not serve (BAN)
NGINX_ORIGIN_CONF = """daemon off; master_process off; pid @DIR@/nginx.pid;
error_log @DIR@/logs/error.log warn;
events { worker_connections 64; }
http { access_log off; client_body_temp_path @DIR@/tmp; proxy_temp_path @DIR@/tmp;
fastcgi_temp_path @DIR@/tmp; uwsgi_temp_path @DIR@/tmp; scgi_temp_path @DIR@/tmp;
server { listen 127.0.0.1:@PORT@; root @ROOT@; } }
"""


def vcl_without_ban() -> str:
    """The repo's VCL minus its BAN block and BAN in the ACL check (as the reviewer's)."""
    start = VARNISH_VCL.index('    if (req.method == "BAN") {')
    end = VARNISH_VCL.index('    if (req.method == "REFRESH") {')
    vcl = VARNISH_VCL[:start] + VARNISH_VCL[end:]
    return vcl.replace(
        'req.method == "PURGE" || req.method == "BAN" || req.method == "REFRESH"',
        'req.method == "PURGE" || req.method == "REFRESH"',
    )


@pytest.fixture
def notes(harness: Harness) -> list[str]:
    out: list[str] = []
    harness.purger.notify = lambda kind, data: out.append(kind)
    return out


@pytest.fixture(params=[("nginx", 405), ("python", 501)], ids=["nginx-405", "python-501"])
async def no_ban(harness: Harness, request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    """The site's only cache: a Varnish without BAN in front of an nginx or Python origin."""
    kind, status = request.param
    base = harness.farm.base / f"noban-{kind}-{time.monotonic_ns()}"
    origin: Cache | None = None
    port = harness.farm.origin.port
    if kind == "nginx":
        origin = Cache("nginx", base / "origin", 0)
        origin.conf = NGINX_ORIGIN_CONF.replace("@ROOT@", str(harness.farm.docroot))
        await anyio.to_thread.run_sync(origin.start)
        port = origin.port
    varnish = Cache("varnish", base / "varnish", port)
    varnish.conf = vcl_without_ban()
    try:
        await anyio.to_thread.run_sync(varnish.start)
        ban = http_get(varnish.port, harness.url_path("x.css?"), host=HOST, method="BAN")
        assert ban[0] == status, ban  # what a VCL without BAN answers, through this origin
        harness.site = harness.store.update_site(
            harness.site.id,
            caches=[{"name": "noban", "driver": "varnish", "address": varnish.address}],
            query_variants=True,
        )
        harness.purger.reload_sites()
        yield varnish
    finally:
        await anyio.to_thread.run_sync(varnish.stop)
        if origin is not None:
            await anyio.to_thread.run_sync(origin.stop)


async def _served(harness: Harness, varnish: Cache, rel: str, body: bytes) -> None:
    deadline = time.monotonic() + BOUND_S
    while True:
        _, got, _ = await anyio.to_thread.run_sync(
            lambda: http_get(varnish.port, harness.url_path(rel), host=HOST)
        )
        if got == body:
            return
        assert time.monotonic() < deadline, f"{rel} still {got!r} after {BOUND_S} s"
        await anyio.sleep(0.01)


def _bans(harness: Harness, rel: str) -> list[Any]:
    """The outcomes of the ban of `rel`'s variants under the site's base URL (its alias has
    its own)."""
    url = f"http://{HOST}{harness.url_path(rel)}?"
    return [r for r in harness.results if r.item.action == "ban" and r.item.url == url]


async def test_refused_variant_bans_do_not_stall_refreshes(
    harness: Harness, no_ban: Cache, notes: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relaysync.purge.purger")
    for rel in FILES:
        harness.write(rel, b"old " + rel.encode())
        for _ in range(2):
            http_get(no_ban.port, harness.url_path(rel), host=HOST)
    harness.write(FILES[0], b"new")
    harness.commit("write", FILES[0])
    await _served(harness, no_ban, FILES[0], b"new")
    await harness.until(lambda: _bans(harness, FILES[0]), what="the first variant ban's outcome")

    def nothing_queued() -> bool:  # the refused ban is not kept for a later probe
        return not harness.store.pending_purges() and harness.purger.queued == 0

    await harness.until(nothing_queued, what="an empty purge queue", timeout_s=BOUND_S)
    [ban] = _bans(harness, FILES[0])
    assert ban.status == "failed" and "query_variants" in ban.detail, ban
    # the later files, after the refusal: their own refreshes are not held behind it
    for rel in FILES[1:]:
        harness.write(rel, b"new " + rel.encode())
        harness.commit("write", rel)
    for rel in FILES[1:]:
        await _served(harness, no_ban, rel, b"new " + rel.encode())
    await harness.until(
        lambda: all(_bans(harness, rel) for rel in FILES), what="every variant ban's outcome"
    )
    await harness.until(nothing_queued, what="an empty purge queue", timeout_s=BOUND_S)
    assert all(len(_bans(harness, rel)) == 1 for rel in FILES)  # recorded once, not retried
    assert notes == []  # no alarm per file (nor purge_refused for the cache)
    warned = [r for r in caplog.records if "query-string variants" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]  # once per refusal streak
