"""Squid (accelerator mode): a client `Cache-Control: no-cache` GET replaces the cached object
in one request; else PURGE (allowed from the purger's address) and a warming GET.
"""

from __future__ import annotations

from typing import ClassVar

from relaysync.purge.drivers._base import Driver, Reply
from relaysync.purge.urls import Url


class Squid(Driver):
    name: ClassVar[str] = "squid"
    refused_advice: ClassVar[str] = (
        "squid.conf must allow PURGE from {ip} (the master): `acl purge method PURGE`, "
        "`acl purgers src {ip}`, `http_access allow purge purgers` before any deny"
    )

    async def refresh_in_place(self, url: Url, encoding: str | None = None) -> Reply | None:
        return await self.request(
            "GET",
            url,
            headers={"Cache-Control": "no-cache", "Pragma": "no-cache"},
            encoding=encoding,
        )
