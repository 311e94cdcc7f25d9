"""Varnish: REFRESH (a forced miss through `req.hash_always_miss`), PURGE, and BAN on a prefix.

The VCL must map the REFRESH method to a GET with hash_always_miss and BAN to a ban on
`obj.http.x-url` (testing/caches.py has such a VCL). A Varnish without REFRESH passes the
method to the origin, which answers 501 (Python), 405 (nginx) or 403: the driver then tries
PURGE, and uses PURGE + GET from then on if that is allowed.

A VCL without BAN passes BAN to the origin the same way. For the ban of a file's query-string
variants (`/a.css?`, a site's query_variants) any such refusal (403, 405, 501, or 400) raises
VariantBanRefused: that ban is best-effort on top of the file's own refresh, and the purger
drops it instead of stopping the cache's other purges (a directory's ban keeps the rules of
check_purge_status).
"""

from __future__ import annotations

from typing import ClassVar

from relaysync.errors import VariantBanRefused
from relaysync.purge.drivers._base import REFUSED, Driver, Reply
from relaysync.purge.urls import Url

# What a Varnish answers to a BAN its VCL does not handle (piped to the origin: nginx 405,
# Python's server 501, some 403), or one it cannot parse (400 from the repo's VCL)
BAN_UNSUPPORTED = REFUSED | {400, 501}
VARIANT_BAN_ADVICE = (
    "this ban of query-string variants is dropped (the file's own URL is refreshed without it); "
    "add the BAN lines of docs/caches.md to the cache's VCL, or set the site's query_variants "
    "to false"
)


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
        """Ban every URL under `prefix`; a query-string variant ban (`/a.css?`) refused raises
        VariantBanRefused, any other refusal as check_purge_status says."""
        reply = await self.request("BAN", prefix)
        if prefix.target.endswith("?") and reply.status in BAN_UNSUPPORTED:
            raise VariantBanRefused(
                self.cache.name, f"BAN {prefix}", reply.status, VARIANT_BAN_ADVICE
            )
        self.check_purge_status("BAN", prefix, reply)
        return "banned"
