"""The common part of the cache drivers: requests to a cache, purge status rules, PURGE + GET.

A driver sends every request to the cache's own address with the Host header of the URL, so
that the cache computes the same key as for its users' requests.

Variants: an origin that sends `Vary: Accept-Encoding` (nginx `gzip_vary on`) makes nginx and
Squid keep one object per Accept-Encoding value, and a purge or refresh reaches only the one
of its own request (docs/caches.md). So a driver works on each of its cache's
`encodings` (`CacheSpec.accept_encodings`, else the driver's default), and confirm.py checks
each. Several encodings: one after the other, PURGE then GET for each (measured: it is what
removes every variant on nginx, whose bypass refresh writes only the first variant's file,
and on Squid, whose PURGE of one variant also drops the Vary marker so that the next PURGE
finds nothing); Squid's no-cache GET and Varnish's REFRESH replace each variant in place.

Error handling:
    403 and 405 on a purge raise CacheRefused (the cache does not allow us: a configuration
    error, not retried); 404 and 412 mean "was not cached"; any other failure (connection
    refused, timeout, 5xx) raises PurgeError and the purger retries with backoff.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar

import httpx

from relaysync.errors import CacheRefused, PurgeError
from relaysync.purge.site import CacheSpec
from relaysync.purge.urls import Url

logger = logging.getLogger(__name__)

NOT_CACHED = frozenset({404, 412})  # the cache held nothing under that key
REFUSED = frozenset({403, 405})  # the cache does not let us purge: configuration error
PURGED = frozenset({200, 204})
# Accept-Encoding values nginx and Squid are refreshed, purged and confirmed under by default
# ("" = no header: curl, bots): what browsers and common clients send.
DEFAULT_ACCEPT_ENCODINGS: tuple[str, ...] = (
    "",
    "identity",
    "gzip",
    "gzip, deflate",
    "gzip, deflate, br",
    "gzip, deflate, br, zstd",
    "deflate, gzip, br, zstd",
)
BROWSER_ACCEPT_ENCODING = "gzip, deflate, br, zstd"


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    encoding: str | None,
) -> httpx.Response:
    """Send one request with `encoding` as its Accept-Encoding ("" = none; None = the client's
    default) and read the whole answer (decoded where httpx knows the coding)."""
    request = client.build_request(method, url, headers=headers)
    if encoding is not None:
        request.headers.pop("accept-encoding", None)
        if encoding:
            request.headers["Accept-Encoding"] = encoding
    return await client.send(request)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    headers: httpx.Headers


class Driver:
    """A cache reached over HTTP; the base behaviour is PURGE, then a warming GET."""

    name: ClassVar[str] = "base"
    can_ban: ClassVar[bool] = False  # purges a whole URL prefix in one request
    purge_method: ClassVar[str] = "PURGE"
    default_encodings: ClassVar[tuple[str, ...]] = DEFAULT_ACCEPT_ENCODINGS
    refreshes_each_variant: ClassVar[bool] = True  # its one-request refresh takes one variant

    def __init__(self, cache: CacheSpec, client: httpx.AsyncClient) -> None:
        self.cache = cache
        self.client = client
        self.base = f"http://{cache.address}"
        self.one_request = cache.refresh  # cleared when the cache turns out not to support it
        self.encodings = cache.accept_encodings or self.default_encodings
        self.stale_refreshes = 0  # one-request refreshes the cache ignored (confirm.py)

    async def request(
        self,
        method: str,
        url: Url,
        *,
        target: str | None = None,
        headers: dict[str, str] | None = None,
        encoding: str | None = None,
    ) -> Reply:
        """Send one request to the cache for `url` (with Accept-Encoding `encoding`, see send())
        and read the whole answer.

        Raises:
            PurgeError: the cache could not be reached or did not answer in time.
        """
        sent = {"Host": url.host, **(headers or {})}
        try:
            target_url = self.base + (target or url.target)
            r = await send(self.client, method, target_url, sent, encoding)
        except httpx.HTTPError as exc:
            raise PurgeError(
                f"{self.cache.name}: {method} {url}: {type(exc).__name__}: {exc}"
            ) from exc
        return Reply(r.status_code, r.content, r.headers)

    async def get(self, url: Url, encoding: str | None = None) -> Reply:
        """GET `url` from the cache, the way a user sending Accept-Encoding `encoding` would."""
        return await self.request("GET", url, encoding=encoding)

    def check_purge_status(self, method: str, url: Url, status: int) -> str:
        """Map a purge answer to "purged" or "not_cached", or raise."""
        if status in PURGED:
            return "purged"
        if status in NOT_CACHED:
            return "not_cached"
        if status in REFUSED:
            raise CacheRefused(self.cache.name, f"{method} {url}", status)
        raise PurgeError(f"{self.cache.name}: {method} {url}: HTTP {status}")

    async def purge_variant(self, url: Url, encoding: str | None = None) -> str:
        """Drop the cached copy of `url` under Accept-Encoding `encoding`; return "purged" or
        "not_cached"."""
        reply = await self.request(self.purge_method, url, encoding=encoding)
        return self.check_purge_status(self.purge_method, url, reply.status)

    async def purge(self, url: Url) -> str:
        """Drop every variant of `url` (one PURGE where there is one encoding, else PURGE + GET
        for each: see the module's doc); return "purged" if any was cached, or "not_cached"."""
        if len(self.encodings) == 1:
            return await self.purge_variant(url, self.encodings[0])
        return await self.purge_and_get(url)

    async def purge_and_get(self, url: Url) -> str:
        """PURGE then a warming GET of `url`, for each encoding in turn."""
        statuses = []
        for encoding in self.encodings:
            statuses.append(await self.purge_variant(url, encoding))
            await self.get(url, encoding)  # warm it, so that no user meets the empty cache
        return "purged" if "purged" in statuses else "not_cached"

    async def refresh_in_place(self, url: Url, encoding: str | None = None) -> Reply | None:
        """One request that makes the cache fetch `url` anew; None where the cache cannot."""
        return None

    async def refresh(self, url: Url) -> str:
        """Make the cache hold the origin's current version of `url`; return what was done."""
        if self.one_request and (self.refreshes_each_variant or len(self.encodings) == 1):
            for encoding in self.encodings:
                if not await self._refresh_variant(url, encoding):
                    break
            else:
                return "refreshed"
        return await self.purge_and_get(url)

    async def _refresh_variant(self, url: Url, encoding: str) -> bool:
        """One-request refresh of one variant; False where the cache has none (then PURGE+GET)."""
        reply = await self.refresh_in_place(url, encoding)
        if reply is None:
            return False
        if reply.status in REFUSED:
            raise CacheRefused(self.cache.name, f"refresh {url}", reply.status)
        if reply.status < 500:
            return True
        if reply.status == 501:  # the cache does not know the refresh request
            logger.warning(
                "cache %s has no one-request refresh; using PURGE + GET", self.cache.name
            )
            self.one_request = False
            return False
        raise PurgeError(f"{self.cache.name}: refresh {url}: HTTP {reply.status}")

    async def ban(self, prefix: Url) -> str:
        """Drop every object whose URL starts with `prefix` (only where can_ban)."""
        raise PurgeError(f"{self.cache.name}: {self.name} caches take no prefix purges")


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
