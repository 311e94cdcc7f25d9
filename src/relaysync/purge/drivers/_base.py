"""The common part of the cache drivers: requests to a cache, purge status rules, PURGE + GET.

A driver sends every request to the cache's own address with the Host header of the URL, so
that the cache computes the same key as for its users' requests.

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

    def __init__(self, cache: CacheSpec, client: httpx.AsyncClient) -> None:
        self.cache = cache
        self.client = client
        self.base = f"http://{cache.address}"
        self.one_request = cache.refresh  # cleared when the cache turns out not to support it
        self.stale_refreshes = 0  # one-request refreshes the cache ignored (confirm.py)

    async def request(
        self,
        method: str,
        url: Url,
        *,
        target: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send one request to the cache for `url` and read the whole answer.

        Raises:
            PurgeError: the cache could not be reached or did not answer in time.
        """
        sent = {"Host": url.host, **(headers or {})}
        try:
            r = await self.client.request(method, self.base + (target or url.target), headers=sent)
        except httpx.HTTPError as exc:
            raise PurgeError(
                f"{self.cache.name}: {method} {url}: {type(exc).__name__}: {exc}"
            ) from exc
        return Reply(r.status_code, r.content, r.headers)

    async def get(self, url: Url) -> Reply:
        """GET `url` from the cache, the way a user would."""
        return await self.request("GET", url)

    def check_purge_status(self, method: str, url: Url, status: int) -> str:
        """Map a purge answer to "purged" or "not_cached", or raise."""
        if status in PURGED:
            return "purged"
        if status in NOT_CACHED:
            return "not_cached"
        if status in REFUSED:
            raise CacheRefused(self.cache.name, f"{method} {url}", status)
        raise PurgeError(f"{self.cache.name}: {method} {url}: HTTP {status}")

    async def purge(self, url: Url) -> str:
        """Drop the cached copy of `url`; return "purged" or "not_cached"."""
        reply = await self.request(self.purge_method, url)
        return self.check_purge_status(self.purge_method, url, reply.status)

    async def refresh_in_place(self, url: Url) -> Reply | None:
        """One request that makes the cache fetch `url` anew; None where the cache cannot."""
        return None

    async def refresh(self, url: Url) -> str:
        """Make the cache hold the origin's current version of `url`; return what was done."""
        if self.one_request:
            reply = await self.refresh_in_place(url)
            if reply is not None:
                if reply.status in REFUSED:
                    raise CacheRefused(self.cache.name, f"refresh {url}", reply.status)
                if reply.status < 500:
                    return "refreshed"
                if reply.status == 501:  # the cache does not know the refresh request
                    logger.warning(
                        "cache %s has no one-request refresh; using PURGE + GET", self.cache.name
                    )
                    self.one_request = False
                else:
                    raise PurgeError(f"{self.cache.name}: refresh {url}: HTTP {reply.status}")
        status = await self.purge(url)
        await self.get(url)  # warm it, so that no user meets the empty cache
        return status

    async def ban(self, prefix: Url) -> str:
        """Drop every object whose URL starts with `prefix` (only where can_ban)."""
        raise PurgeError(f"{self.cache.name}: {self.name} caches take no prefix purges")


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
