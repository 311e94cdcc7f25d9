"""Refresh-and-confirm: run one purge item on one cache, then prove with a GET that the cache
serves what an origin serves (status, and the body's SHA-256 for a 200).

Bodies are hashed as they stream, never held: a file of any size costs a few chunks of memory.
Where both answers say their length, ETag or Last-Modified and these differ, the copy is stale
without reading either body (a big stale file is not read twice per look).

A 200 from a purge proves nothing by itself (reference/caches/README.md); nor does an ETag
from an origin whose ETag is mtime seconds and size, so the bodies are compared. Nor does a 200
from a one-request refresh: Squid with `reload_into_ims` or `ignore-reload`, or a VCL that turns
REFRESH into a plain GET, answers from its old copy. When the confirm after a one-request
refresh fails, the same attempt does PURGE + GET; if that confirms, the driver uses PURGE + GET
from then on.

Variants: the first look asks the origin and the cache with the driver's first Accept-Encoding;
where either answer varies on Accept-Encoding (or after a purge on a cache worked under several
encodings) each other encoding is confirmed too, the same way: a stale gzip copy is not hidden
by a fresh identity one (bodies are compared decoded).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio
import httpx

from relaysync.errors import PurgeError, StaleCopy
from relaysync.purge.drivers import Driver
from relaysync.purge.drivers._base import build_request, read_body, varies_on_encoding
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.urls import Url, parse_url

logger = logging.getLogger(__name__)

CONFIRM_ATTEMPTS = 3  # GETs before a refresh counts as failed (and is retried from the queue)
CONFIRM_PAUSE_S = 0.02  # between those GETs: a cache may still be storing the new object
STALE_REFRESHES_TO_SWITCH = 3  # one-request refreshes a cache ignored before it gets PURGE + GET


@dataclass(frozen=True, slots=True)
class Head:
    """What an answer's status line and headers say about its body, before reading it."""

    status: int
    length: int | None  # Content-Length of an unencoded body, else None
    etag: str  # without W/: a cache that compresses weakens the origin's ETag
    last_modified: str

    @classmethod
    def of(cls, r: httpx.Response) -> Head:
        length = r.headers.get("content-length", "")
        plain = not r.headers.get("content-encoding") and length.isdigit()
        return cls(
            r.status_code,
            int(length) if plain else None,
            r.headers.get("etag", "").removeprefix("W/"),
            r.headers.get("last-modified", ""),
        )

    def differs(self, other: Head) -> str:
        """Why the two bodies cannot be the same ("" if they may be): checked where both
        sides say, so that a big stale copy is not read at all."""
        if self.status != other.status:
            return f"HTTP {self.status}"
        if self.status != 200:  # only a 200's body is compared (an error page may differ)
            return ""
        for what, a, b in (
            ("length", self.length, other.length),
            ("ETag", self.etag, other.etag),
            ("Last-Modified", self.last_modified, other.last_modified),
        ):
            if a not in (None, "") and b not in (None, "") and a != b:
                return f"{what} {a}"
        return ""


async def _fingerprint(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, (await read_body(r))[0] if r.status_code == 200 else ""


async def open_origin(
    stack: AsyncExitStack,
    client: httpx.AsyncClient,
    origins: Sequence[str],
    url: Url,
    encoding: str | None = None,
) -> httpx.Response | None:
    """Open a GET of `url` (Accept-Encoding `encoding`) on the first origin that answers; None
    if none does."""
    for base in origins:
        request = build_request(client, "GET", base + url.target, {"Host": url.host}, encoding)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            logger.debug("origin %s did not answer: %s", base, exc)
            continue
        stack.push_async_callback(response.aclose)
        return response
    return None


@dataclass(frozen=True, slots=True)
class Served:
    """What a confirm found a cache serving, the same as an origin, under one Accept-Encoding:
    what a later look compares with (purge/recheck.py)."""

    encoding: str
    status: int
    digest: str  # SHA-256 of the decoded body of a 200 ("" otherwise)
    head: Head


@dataclass(frozen=True, slots=True)
class _Look:
    got: str  # what the cache served, "" when it is what the origin served
    want: str
    varies: bool  # the origin's or the cache's answer varies on Accept-Encoding
    served: Served | None = None  # when the cache served what the origin served


async def _compare(
    driver: Driver, client: httpx.AsyncClient, origins: Sequence[str], url: Url, encoding: str
) -> _Look | None:
    """One look under Accept-Encoding `encoding`; None without an origin. Bodies are hashed as
    they stream, headers compared first."""
    async with AsyncExitStack() as stack:
        origin = await open_origin(stack, client, origins, url, encoding)
        if origin is None:
            return None
        cached = await stack.enter_async_context(driver.stream("GET", url, encoding=encoding))
        varies = (  # (an error page without Vary says nothing of the copies the cache holds)
            origin.status_code != 200
            or varies_on_encoding(origin.headers)
            or varies_on_encoding(cached.headers)
        )
        want_head, got_head = Head.of(origin), Head.of(cached)
        why = got_head.differs(want_head)
        if why:
            return _Look(why, want_head.differs(got_head), varies)
        try:
            want = await _fingerprint(origin)
        except httpx.HTTPError as exc:
            raise PurgeError(f"origin {url}: {type(exc).__name__}: {exc}") from exc
        got = await _fingerprint(cached)
        if got == want:
            return _Look("", "", varies, Served(encoding, got[0], got[1], got_head))
        return _Look(f"HTTP {got[0]} {got[1][:12]}", f"HTTP {want[0]} {want[1][:12]}", varies)


async def confirm(
    driver: Driver,
    client: httpx.AsyncClient,
    origins: Sequence[str],
    url: Url,
    *,
    every: bool = False,
    served: list[Served] | None = None,
) -> bool | None:
    """Return True once the cache serves what an origin serves, None without an origin: under
    the driver's first encoding, and under each other one where that look's answers vary on
    Accept-Encoding (or `every`). What each look found is added to `served` (if given).

    Raises:
        StaleCopy: the cache still serves something else after CONFIRM_ATTEMPTS tries.
        PurgeError: the cache could not be reached.
    """
    first, *rest = driver.encodings
    look = await confirm_variant(driver, client, origins, url, first)
    if look is None:
        return None
    _keep(served, look)
    if not (every or look.varies):
        return True
    for encoding in rest:
        look = await confirm_variant(driver, client, origins, url, encoding)
        if look is None:
            return None
        _keep(served, look)
    return True


def _keep(served: list[Served] | None, look: _Look) -> None:
    if served is not None and look.served is not None:
        served.append(look.served)


async def confirm_variant(
    driver: Driver, client: httpx.AsyncClient, origins: Sequence[str], url: Url, encoding: str
) -> _Look | None:
    """The look at which the cache serves what an origin serves under Accept-Encoding
    `encoding`; None without an origin.

    Raises:
        as confirm().
    """
    if not origins:
        return None
    seen = _Look("", "", False)
    for attempt in range(CONFIRM_ATTEMPTS):
        found = await _compare(driver, client, origins, url, encoding)
        if found is None or (found.got, found.want) == ("", ""):
            return found
        seen = found
        if attempt + 1 < CONFIRM_ATTEMPTS:
            await anyio.sleep(CONFIRM_PAUSE_S)
    where = str(url) if len(driver.encodings) == 1 else f"{url} (Accept-Encoding: {encoding!r})"
    raise StaleCopy(driver.cache.name, where, seen.got, seen.want)


async def run_item(
    driver: Driver,
    client: httpx.AsyncClient,
    origins: Sequence[str],
    item: PurgeItem,
    served: list[Served] | None = None,
) -> tuple[str, bool | None]:
    """Do `item` on its cache and confirm it; return (status, confirmed). What the confirm
    found the cache serving is added to `served` (if given; nothing for a ban).

    Raises:
        CacheRefused: a configuration error; PurgeError: a failure worth retrying.
    """
    url = parse_url(item.url)
    if item.action == "ban":
        return await driver.ban(url), None
    if item.action == "purge":  # a purge says nothing of variants: each is confirmed
        status = await driver.purge(url)
        return status, await confirm(driver, client, origins, url, every=True, served=served)
    one_request = driver.one_request
    status = await driver.refresh(url)
    try:
        confirmed = await confirm(driver, client, origins, url, served=served)
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
    if served is not None:
        served.clear()  # (a confirm that failed under a later encoding kept its earlier ones)
    confirmed = await confirm(driver, client, origins, url, served=served)
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
