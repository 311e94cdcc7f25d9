"""nginx with the cache-purge module: a GET with `X-Refresh: 1` that proxy_cache_bypass honours
from the purger's address only, else PURGE (a separate purge location) and a warming GET.

nginx's cache key here ignores the host, so every alias shares one object.
The bypass refresh rewrites only the file of the URL's main key: where its answer varies on
Accept-Encoding, the other variants get PURGE + GET each (measured; docs/caches.md).
"""

from __future__ import annotations

import logging
from typing import ClassVar

from relaysync.purge.drivers._base import Driver, Reply
from relaysync.purge.urls import Url

logger = logging.getLogger(__name__)

REFRESH_HEADER = "X-Refresh"


class Nginx(Driver):
    name: ClassVar[str] = "nginx"
    refreshes_each_variant: ClassVar[bool] = False
    late_fills_win: ClassVar[bool] = True  # it keeps whichever fetch ends last (recheck.py)
    refused_advice: ClassVar[str] = (
        "its purge location (proxy_cache_purge) must `allow {ip};` (the master), and its "
        "proxy_cache_bypass must honour X-Refresh from that address"
    )

    async def refresh_in_place(self, url: Url, encoding: str | None = None) -> Reply | None:
        reply = await self.request("GET", url, headers={REFRESH_HEADER: "1"}, encoding=encoding)
        if reply.headers.get("x-cache-status", "").upper() not in ("BYPASS", "MISS", "EXPIRED"):
            # proxy_cache_bypass is not set up for us: the cache answered from its copy
            logger.warning(
                "nginx %s ignores %s; using PURGE + GET", self.cache.name, REFRESH_HEADER
            )
            self.one_request = False
            await self.purge_variant(url, encoding)
            return await self.get(url, encoding)
        return reply
