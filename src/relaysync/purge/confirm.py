"""Refresh-and-confirm: run one purge item on one cache, then prove with a GET that the cache
serves what an origin serves (status, and the body's SHA-256 for a 200).

A 200 from a purge proves nothing by itself (docs/caches.md); nor does an ETag
from an origin whose ETag is mtime seconds and size, so the bodies are compared. Nor does a 200
from a one-request refresh: Squid with `reload_into_ims` or `ignore-reload`, or a VCL that turns
REFRESH into a plain GET, answers from its old copy. When the confirm after a one-request
refresh fails, the same attempt does PURGE + GET; if that confirms, the driver uses PURGE + GET
from then on. Each Accept-Encoding variant the driver works on is confirmed (the origin and the
cache asked with the same header, bodies compared decoded): a stale gzip copy is not hidden
by a fresh identity one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import anyio
import httpx

from relaysync.errors import StaleCopy
from relaysync.purge.drivers import Driver
from relaysync.purge.drivers._base import send
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.urls import Url, parse_url

logger = logging.getLogger(__name__)

CONFIRM_ATTEMPTS = 3  # GETs before a refresh counts as failed (and is retried from the queue)
CONFIRM_PAUSE_S = 0.02  # between those GETs: a cache may still be storing the new object
STALE_REFRESHES_TO_SWITCH = 3  # one-request refreshes a cache ignored before it gets PURGE + GET


def _fingerprint(status: int, body: bytes) -> tuple[int, str]:
    return status, hashlib.sha256(body).hexdigest() if status == 200 else ""


async def fetch_origin(
    client: httpx.AsyncClient, origins: Sequence[str], url: Url, encoding: str | None = None
) -> tuple[int, str] | None:
    """GET `url` (Accept-Encoding `encoding`) straight from the first origin that answers;
    None if none does."""
    for base in origins:
        try:
            r = await send(client, "GET", base + url.target, {"Host": url.host}, encoding)
        except httpx.HTTPError as exc:
            logger.debug("origin %s did not answer: %s", base, exc)
            continue
        return _fingerprint(r.status_code, r.content)
    return None


async def confirm(
    driver: Driver, client: httpx.AsyncClient, origins: Sequence[str], url: Url
) -> bool | None:
    """Return True once the cache serves what an origin serves under each of the driver's
    encodings, None without an origin.

    Raises:
        StaleCopy: the cache still serves something else after CONFIRM_ATTEMPTS tries.
        PurgeError: the cache could not be reached.
    """
    for encoding in driver.encodings:
        if not await confirm_variant(driver, client, origins, url, encoding):
            return None
    return True


async def confirm_variant(
    driver: Driver, client: httpx.AsyncClient, origins: Sequence[str], url: Url, encoding: str
) -> bool | None:
    """confirm() for one Accept-Encoding value."""
    if not origins:
        return None
    want: tuple[int, str] | None = None
    got: tuple[int, str] = (0, "")
    for attempt in range(CONFIRM_ATTEMPTS):
        want = await fetch_origin(client, origins, url, encoding)
        if want is None:
            return None
        reply = await driver.get(url, encoding)
        got = _fingerprint(reply.status, reply.body)
        if got == want:
            return True
        if attempt + 1 < CONFIRM_ATTEMPTS:
            await anyio.sleep(CONFIRM_PAUSE_S)
    assert want is not None
    raise StaleCopy(
        driver.cache.name,
        f"{url} (Accept-Encoding: {encoding!r})",
        f"HTTP {got[0]} {got[1][:12]}",
        f"HTTP {want[0]} {want[1][:12]}",
    )


async def run_item(
    driver: Driver, client: httpx.AsyncClient, origins: Sequence[str], item: PurgeItem
) -> tuple[str, bool | None]:
    """Do `item` on its cache and confirm it; return (status, confirmed).

    Raises:
        CacheRefused: a configuration error; PurgeError: a failure worth retrying.
    """
    url = parse_url(item.url)
    if item.action == "ban":
        return await driver.ban(url), None
    if item.action == "purge":
        return await driver.purge(url), await confirm(driver, client, origins, url)
    one_request = driver.one_request
    status = await driver.refresh(url)
    try:
        confirmed = await confirm(driver, client, origins, url)
    except StaleCopy as exc:
        if not (one_request and status == "refreshed"):  # (another item may have switched it since)
            raise
        stale = exc
    else:
        return status, confirmed
    # The cache served its old copy after a one-request refresh: PURGE + GET now. Only after
    # STALE_REFRESHES_TO_SWITCH such refreshes does the cache get PURGE + GET for good (one may
    # be a confirm racing the cache storing the new object).
    status = await driver.purge_and_get(url)
    confirmed = await confirm(driver, client, origins, url)
    if confirmed and driver.one_request:
        driver.stale_refreshes += 1
        if driver.stale_refreshes >= STALE_REFRESHES_TO_SWITCH:
            logger.warning(
                "cache %s kept its copy on %s one-request refreshes (last: %s); "
                "using PURGE + GET from now on",
                driver.cache.name,
                driver.stale_refreshes,
                stale,
            )
            driver.one_request = False
    return status, confirmed
