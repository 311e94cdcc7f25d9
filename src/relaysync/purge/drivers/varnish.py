"""Varnish: REFRESH (a forced miss through `req.hash_always_miss`), PURGE, and BAN on a prefix.

The VCL must map the REFRESH method to a GET with hash_always_miss and BAN to a ban on
`obj.http.x-url` (testing/caches.py has such a VCL). A Varnish without REFRESH passes the
method to the origin, which answers 501: the driver then falls back to PURGE + GET.
"""

from __future__ import annotations

from typing import ClassVar

from relaysync.purge.drivers._base import BROWSER_ACCEPT_ENCODING, Driver, Reply
from relaysync.purge.urls import Url


class Varnish(Driver):
    name: ClassVar[str] = "varnish"
    can_ban: ClassVar[bool] = True
    # Varnish folds Accept-Encoding to gzip or none itself, and a PURGE or BAN drops every
    # variant: one request does (a VCL that keeps more variants: set accept_encodings)
    default_encodings: ClassVar[tuple[str, ...]] = (BROWSER_ACCEPT_ENCODING,)

    async def refresh_in_place(self, url: Url, encoding: str | None = None) -> Reply | None:
        return await self.request("REFRESH", url, encoding=encoding)

    async def ban(self, prefix: Url) -> str:
        reply = await self.request("BAN", prefix)
        self.check_purge_status("BAN", prefix, reply.status)
        return "banned"
