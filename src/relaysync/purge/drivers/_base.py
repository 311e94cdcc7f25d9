"""The common part of the cache drivers: requests to a cache, purge status rules, PURGE + GET.

A driver sends every request to the cache's own address with the Host header of the URL, so
that the cache computes the same key as for its users' requests.

Variants: an origin that sends `Vary: Accept-Encoding` (nginx `gzip_vary on`) makes nginx and
Squid keep one object per Accept-Encoding value, and a purge or refresh reaches only the one
of its own request (docs/caches.md). So a driver works on its cache's `encodings`
(`CacheSpec.encodings`): the first request of a refresh goes with the first one, as before,
and only when that answer varies on Accept-Encoding are the others done too, one after the
other: PURGE then GET for each (measured: it is what removes every variant on nginx, whose
bypass refresh writes only the URL's main key file, and on Squid, whose PURGE of one variant
also drops the Vary marker so that the next PURGE finds nothing); Squid's no-cache GET and
Varnish's REFRESH replace each variant in place. A purge (a delete) answers nothing about
variants, so with several encodings it does PURGE + GET for each.

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
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

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


def varies_on_encoding(headers: httpx.Headers) -> bool:
    """Whether an answer's Vary names Accept-Encoding (or is `*`): the cache keeps one object
    per Accept-Encoding value for its URL."""
    names = {n.strip().lower() for v in headers.get_list("vary") for n in v.split(",")}
    return bool(names & {"accept-encoding", "*"})


def keeps_variants(reply: Reply) -> bool:
    """Whether, after this answer to a refresh's first request, the cache may hold other
    Accept-Encoding variants of the URL: the answer varies on it, or is no 200 (an error page
    without Vary, which nginx does not store, says nothing of the copies the cache holds)."""
    return reply.status != 200 or varies_on_encoding(reply.headers)


def build_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    encoding: str | None,
) -> httpx.Request:
    """A request with `encoding` as its Accept-Encoding ("" = none; None = the client's own);
    the item's time budget grants it its time (purge/budget.py)."""
    budget.requested()
    request = client.build_request(method, url, headers=headers)
    if encoding is not None:
        request.headers.pop("accept-encoding", None)
        if encoding:
            request.headers["Accept-Encoding"] = encoding
    return request


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: httpx.Headers
    sha256: str  # of the (decoded) body, read as a stream and not kept
    length: int
    local_ip: str = ""  # the master's address as the cache saw it (for a refusal's advice)


DECODED_CHUNK = 1 << 20  # bytes of a gzip or deflate body decoded at a time


async def read_body(response: httpx.Response) -> tuple[str, int]:
    """Hash an answer's (decoded) body as it streams in; return (SHA-256 hex, length)."""
    digest, length = hashlib.sha256(), 0
    async for chunk in _decoded(response):
        digest.update(chunk)
        length += len(chunk)
        budget.moved(len(chunk))
    return digest.hexdigest(), length


async def read_body_upto(response: httpx.Response, limit: int) -> str | None:
    """The SHA-256 hex of an answer's (decoded) body, or None once it passes `limit` bytes
    (the rest is not read)."""
    digest, length = hashlib.sha256(), 0
    async for chunk in _decoded(response):
        length += len(chunk)
        budget.moved(len(chunk))
        if length > limit:
            return None
        digest.update(chunk)
    return digest.hexdigest()


async def _decoded(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body decoded a bounded chunk at a time: httpx decodes each chunk read whole, and a
    compressed chunk of a repetitive file (24 MB of one byte gzips to 24 kB) is its size.

    Raises:
        httpx.DecodingError: the body is not in its Content-Encoding.
    """
    coding = response.headers.get("content-encoding", "").strip().lower()
    if coding not in ("gzip", "x-gzip", "deflate"):
        async for chunk in response.aiter_bytes():
            yield chunk
        return
    unpack: Any = None
    try:
        async for raw in response.aiter_raw():
            if unpack is None:
                unpack = zlib.decompressobj(_wbits(coding, raw))
            data = raw
            while True:
                out = unpack.decompress(data, DECODED_CHUNK)
                if out:
                    yield out
                data = unpack.unconsumed_tail
                if not data and len(out) < DECODED_CHUNK:
                    break
        if unpack is not None:
            yield unpack.flush()
    except zlib.error as exc:
        raise httpx.DecodingError(f"{coding} body: {exc}", request=response.request) from exc


def _wbits(coding: str, first: bytes) -> int:
    """gzip, or deflate in its zlib wrapping or raw (httpx takes both)."""
    if "gzip" in coding:
        return zlib.MAX_WBITS | 16
    zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


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
    refreshes_each_variant: ClassVar[bool] = True  # its one-request refresh takes one variant
    # A fetch that began before a refresh and ends after it replaces the new copy: confirmed
    # items are looked at again later (purge/recheck.py)
    late_fills_win: ClassVar[bool] = False

    def __init__(self, cache: CacheSpec, client: httpx.AsyncClient) -> None:
        self.cache = cache
        self.client = client
        try:
            self.base = parse_cache_address(cache.address).base
        except ConfigError as exc:  # stored before addresses were checked this strictly
            self.base = ""
            self.bad_address = str(exc)
        self.encodings = cache.encodings
        self.one_request = cache.refresh  # cleared when the cache turns out not to support it
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
        """Send one request to the cache for `url` (Accept-Encoding `encoding`, see
        build_request()) and read (hash) the whole answer.

        Raises:
            CacheUnreachable: the cache could not be reached or did not answer in time.
            CacheMisconfigured: its address is not one httpx can use.
            PurgeError: any other failure of the exchange.
        """
        async with self.stream(method, url, target=target, headers=headers, encoding=encoding) as r:
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
        encoding: str | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Open one request to the cache for `url`; the body is left to the caller to stream.

        Raises:
            as request().
        """
        if not self.base:
            raise CacheMisconfigured(self.cache.name, self.bad_address)
        sent = {"Host": url.host, **(headers or {})}
        with self._errors_mapped(method, url):
            request = build_request(
                self.client, method, self.base + (target or url.target), sent, encoding
            )
            response = await self.client.send(request, stream=True)
            try:
                yield response
            finally:
                await response.aclose()

    @contextmanager
    def _errors_mapped(self, method: str, url: Url) -> Iterator[None]:
        """httpx's errors of a request to the cache (and of streaming its answer) as ours."""
        try:
            yield
        except httpx.InvalidURL as exc:
            raise CacheMisconfigured(
                self.cache.name, f"address {self.cache.address!r} gives no usable URL: {exc}"
            ) from exc
        except httpx.LocalProtocolError as exc:  # a TransportError, but no fault of the cache's
            raise CacheMisconfigured(
                self.cache.name,
                f"{method} {url}: the request cannot be sent as configured (check the cache's "
                f"path_template and headers): {exc}",
            ) from exc
        except httpx.TransportError as exc:
            raise CacheUnreachable(
                self.cache.name,
                f"{method} {url}",
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                timeout_s=expired_timeout_s(exc),
            ) from exc
        except httpx.HTTPError as exc:
            raise PurgeError(f"{self.cache.name}: {method} {url}: {exc}") from exc

    async def _read(self, response: httpx.Response, method: str, url: Url) -> tuple[str, int]:
        try:
            return await read_body(response)
        except httpx.DecodingError as exc:
            raise PurgeError(f"{self.cache.name}: {method} {url}: {exc}") from exc

    async def get(self, url: Url, encoding: str | None = None) -> Reply:
        """GET `url` from the cache, the way a user sending Accept-Encoding `encoding` would."""
        return await self.request("GET", url, encoding=encoding)

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

    async def purge_variant(self, url: Url, encoding: str | None = None) -> str:
        """Drop the cached copy of `url` under Accept-Encoding `encoding`; return "purged" or
        "not_cached"."""
        reply = await self.request(self.purge_method, url, encoding=encoding)
        return self.check_purge_status(self.purge_method, url, reply)

    async def purge(self, url: Url) -> str:
        """Drop every copy of `url`: one PURGE with one encoding, else PURGE + GET for each (a
        purge's answer does not say whether the cache kept variants); "purged" if any was."""
        if len(self.encodings) == 1:
            return await self.purge_variant(url, self.encodings[0])
        return await self._purge_and_get_each(url, self.encodings)

    async def purge_and_get(self, url: Url) -> str:
        """PURGE then a warming GET, under the first encoding; again for each other one when
        the GET's answer varies on Accept-Encoding."""
        status = await self.purge_variant(url, self.encodings[0])
        return await self._warm(url, status)

    async def _warm(self, url: Url, status: str) -> str:
        """The warming GET after the first encoding's PURGE (so that no user meets the empty
        cache), then PURGE + GET for the other encodings where its answer varies."""
        first, *rest = self.encodings
        reply = await self.get(url, first)
        if rest and keeps_variants(reply):
            if await self._purge_and_get_each(url, rest) == "purged":
                return "purged"
        return status

    async def _purge_and_get_each(self, url: Url, encodings: Sequence[str]) -> str:
        statuses = []
        for encoding in encodings:
            statuses.append(await self.purge_variant(url, encoding))
            await self.get(url, encoding)
        return "purged" if "purged" in statuses else "not_cached"

    async def refresh_in_place(self, url: Url, encoding: str | None = None) -> Reply | None:
        """One request that makes the cache fetch `url` anew; None where the cache cannot."""
        return None

    async def refresh(self, url: Url) -> str:
        """Make the cache hold the origin's current version of `url`; return what was done."""
        if self.one_request:
            reply = await self.refresh_in_place(url, self.encodings[0])
            if reply is not None:
                if self.refresh_known(url, reply):
                    if len(self.encodings) > 1 and keeps_variants(reply):
                        return await self._refresh_others(url)
                    return "refreshed"
                # refused or unknown (a VCL without REFRESH passes it to the origin: nginx
                # answers 405, Python's server 501): PURGE decides whether we may purge at all
                status = await self.purge_variant(url, self.encodings[0])
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
                return await self._warm(url, status)
        return await self.purge_and_get(url)

    async def _refresh_others(self, url: Url) -> str:
        """The first encoding's one-request refresh answered with Vary: the other variants,
        in place where the cache's refresh takes one variant, else by PURGE + GET."""
        rest = self.encodings[1:]
        if not self.refreshes_each_variant:
            await self._purge_and_get_each(url, rest)
            return "refreshed"
        for i, encoding in enumerate(rest):
            reply = await self.refresh_in_place(url, encoding)
            if reply is None or not self.refresh_known(url, reply):
                await self._purge_and_get_each(url, rest[i:])
                break
        return "refreshed"

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


_TIMEOUT_KEYS = (
    (httpx.ConnectTimeout, "connect"),
    (httpx.ReadTimeout, "read"),
    (httpx.WriteTimeout, "write"),
    (httpx.PoolTimeout, "pool"),
)


def expired_timeout_s(exc: httpx.TransportError) -> float | None:
    """The length of the request's timeout that `exc` says expired; None if it is no timeout
    (or its request does not say)."""
    key = next((k for cls, k in _TIMEOUT_KEYS if isinstance(exc, cls)), None)
    try:
        timeouts = exc.request.extensions.get("timeout", {}) if key else {}
    except RuntimeError:  # raised without its request
        return None
    value = timeouts.get(key) if key else None
    return float(value) if isinstance(value, int | float) else None


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
