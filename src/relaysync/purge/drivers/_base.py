"""The common part of the cache drivers: requests to a cache, purge status rules, PURGE + GET.

A driver sends every request to the cache's own address with the Host header of the URL, so
that the cache computes the same key as for its users' requests.

Bodies are never held in memory: a driver reads an answer as a stream, hashing it (SHA-256)
and feeding the item's time budget (purge/budget.py) as bytes arrive.

Error handling:
    403 and 405 on a purge raise CacheRefused, saying what to allow in that kind of cache and
    from which address the master came (a configuration error: the purger keeps the item and
    probes now and then); 404 and 412 mean "was not cached". An address httpx cannot use raises
    CacheMisconfigured. No connection or no answer raises CacheUnreachable (the purger's circuit
    breaker counts those); any other failure (5xx) raises PurgeError and is retried.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import ClassVar

import httpx

from relaysync.errors import (
    CacheMisconfigured,
    CacheRefused,
    CacheUnreachable,
    ConfigError,
    PurgeError,
)
from relaysync.purge import budget
from relaysync.purge.addresses import parse_cache_address
from relaysync.purge.site import CacheSpec
from relaysync.purge.urls import Url

logger = logging.getLogger(__name__)

NOT_CACHED = frozenset({404, 412})  # the cache held nothing under that key
REFUSED = frozenset({403, 405})  # the cache does not let us purge: configuration error
PURGED = frozenset({200, 204})


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: httpx.Headers
    sha256: str  # of the (decoded) body, read as a stream and not kept
    length: int
    local_ip: str = ""  # the master's address as the cache saw it (for a refusal's advice)


async def read_body(response: httpx.Response) -> tuple[str, int]:
    """Hash an answer's body as it streams in; return (SHA-256 hex, length)."""
    digest, length = hashlib.sha256(), 0
    async for chunk in response.aiter_bytes():
        digest.update(chunk)
        length += len(chunk)
        budget.moved(len(chunk))
    return digest.hexdigest(), length


def local_ip(response: httpx.Response) -> str:
    """The address this end of the connection had (what a cache's ACL must allow)."""
    stream = response.extensions.get("network_stream")
    try:
        addr = stream.get_extra_info("client_addr") if stream is not None else None
    except OSError:  # closed already
        return ""
    return str(addr[0]) if addr else ""


class Driver:
    """A cache reached over HTTP; the base behaviour is PURGE, then a warming GET."""

    name: ClassVar[str] = "base"
    can_ban: ClassVar[bool] = False  # purges a whole URL prefix in one request
    purge_method: ClassVar[str] = "PURGE"
    refresh_method: ClassVar[str] = "GET"  # of refresh_in_place: a GET's 403 is the page's own
    # What to fix when the cache refuses us; {ip} is the master's address as the cache saw it.
    refused_advice: ClassVar[str] = "allow purge requests from {ip} in the cache's configuration"

    def __init__(self, cache: CacheSpec, client: httpx.AsyncClient) -> None:
        self.cache = cache
        self.client = client
        try:
            self.base = parse_cache_address(cache.address).base
        except ConfigError as exc:  # stored before addresses were checked this strictly
            self.base = ""
            self.bad_address = str(exc)
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
        """Send one request to the cache for `url` and read (hash) the whole answer.

        Raises:
            CacheUnreachable: the cache could not be reached or did not answer in time.
            CacheMisconfigured: its address is not one httpx can use.
            PurgeError: any other failure of the exchange.
        """
        async with self.stream(method, url, target=target, headers=headers) as r:
            ip = local_ip(r)  # before the body: a server that closes after it takes the socket
            sha256, length = await self._read(r, method, url)
            return Reply(r.status_code, r.headers, sha256, length, ip)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: Url,
        *,
        target: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Open one request to the cache for `url`; the body is left to the caller to stream.

        Raises:
            as request().
        """
        if not self.base:
            raise CacheMisconfigured(self.cache.name, self.bad_address)
        sent = {"Host": url.host, **(headers or {})}
        try:
            async with self.client.stream(
                method, self.base + (target or url.target), headers=sent
            ) as response:
                yield response
        except httpx.InvalidURL as exc:
            raise CacheMisconfigured(
                self.cache.name, f"address {self.cache.address!r} gives no usable URL: {exc}"
            ) from exc
        except httpx.TransportError as exc:
            raise CacheUnreachable(
                self.cache.name, f"{method} {url}", f"{type(exc).__name__}: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise PurgeError(f"{self.cache.name}: {method} {url}: {exc}") from exc

    async def _read(self, response: httpx.Response, method: str, url: Url) -> tuple[str, int]:
        try:
            return await read_body(response)
        except httpx.DecodingError as exc:
            raise PurgeError(f"{self.cache.name}: {method} {url}: {exc}") from exc

    async def get(self, url: Url) -> Reply:
        """GET `url` from the cache, the way a user would."""
        return await self.request("GET", url)

    def check_purge_status(self, method: str, url: Url, reply: Reply) -> str:
        """Map a purge answer to "purged" or "not_cached", or raise."""
        status = reply.status
        if status in PURGED:
            return "purged"
        if status in NOT_CACHED:
            return "not_cached"
        if status in REFUSED:
            advice = self.refused_advice.format(ip=reply.local_ip or "the master's address")
            raise CacheRefused(self.cache.name, f"{method} {url}", status, advice)
        raise PurgeError(f"{self.cache.name}: {method} {url}: HTTP {status}")

    async def purge(self, url: Url) -> str:
        """Drop the cached copy of `url`; return "purged" or "not_cached"."""
        reply = await self.request(self.purge_method, url)
        return self.check_purge_status(self.purge_method, url, reply)

    async def refresh_in_place(self, url: Url) -> Reply | None:
        """One request that makes the cache fetch `url` anew; None where the cache cannot."""
        return None

    async def refresh(self, url: Url) -> str:
        """Make the cache hold the origin's current version of `url`; return what was done."""
        if self.one_request:
            reply = await self.refresh_in_place(url)
            if reply is not None:
                if self.refresh_known(url, reply):
                    return "refreshed"
                # refused or unknown (a VCL without REFRESH passes it to the origin: nginx
                # answers 405, Python's server 501): PURGE decides whether we may purge at all
                status = await self.purge(url)
                logger.warning(
                    "cache %s answered HTTP %d to %s but takes %s: using PURGE + GET from now "
                    "on (to refresh in one request, let its configuration take %s)",
                    self.cache.name,
                    reply.status,
                    self.refresh_method,
                    self.purge_method,
                    self.refresh_method,
                )
                self.one_request = False
                await self.get(url)
                return status
        status = await self.purge(url)
        await self.get(url)  # warm it, so that no user meets the empty cache
        return status

    def refresh_known(self, url: Url, reply: Reply) -> bool:
        """Whether the cache did the one-request refresh; False: it refused or did not know it.

        Raises:
            PurgeError: a server error, retried.
        """
        if self.refresh_method == "GET" and reply.status < 500:
            return True  # the page's own status (a 403 page is cached like any other)
        if reply.status in REFUSED or reply.status == 501:
            return False
        if reply.status >= 500:
            raise PurgeError(f"{self.cache.name}: refresh {url}: HTTP {reply.status}")
        return True

    async def ban(self, prefix: Url) -> str:
        """Drop every object whose URL starts with `prefix` (only where can_ban)."""
        raise PurgeError(f"{self.cache.name}: {self.name} caches take no prefix purges")


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
