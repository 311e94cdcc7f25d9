"""Varnish: REFRESH (a forced miss through `req.hash_always_miss`), PURGE, and BAN on a prefix.

The VCL must map the REFRESH method to a GET with hash_always_miss and BAN to a ban on
`obj.http.x-url` (testing/caches.py has such a VCL). A Varnish without REFRESH passes the
method to the origin, which answers 501 (Python), 405 (nginx) or 403: the driver then tries
PURGE, and uses PURGE + GET from then on if that is allowed.
"""

from __future__ import annotations

from typing import ClassVar

from relaysync.purge.drivers._base import Driver, Reply
from relaysync.purge.urls import Url


class Varnish(Driver):
    name: ClassVar[str] = "varnish"
    can_ban: ClassVar[bool] = True
    refresh_method: ClassVar[str] = "REFRESH"
    refused_advice: ClassVar[str] = (
        "its VCL must let {ip} (the master) send PURGE, REFRESH and BAN: add it to the acl "
        "that vcl_recv checks for those methods"
    )

    async def refresh_in_place(self, url: Url, encoding: str | None = None) -> Reply | None:
        return await self.request("REFRESH", url, encoding=encoding)

    async def ban(self, prefix: Url) -> str:
        reply = await self.request("BAN", prefix)
        self.check_purge_status("BAN", prefix, reply)
        return "banned"
