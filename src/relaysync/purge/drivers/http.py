"""Generic HTTP cache: a configured purge request (method, path template, headers), then a
warming GET. Templates may use {path} (the percent-encoded request target), {host} and {url}.
"""

from __future__ import annotations

from typing import ClassVar

from relaysync.purge.drivers._base import Driver
from relaysync.purge.urls import Url


class GenericHttp(Driver):
    name: ClassVar[str] = "http"

    def _fill(self, template: str, url: Url) -> str:
        return template.replace("{path}", url.target).replace("{host}", url.host).replace(
            "{url}", str(url))

    async def purge(self, url: Url) -> str:
        method = self.cache.method or "PURGE"
        target = self._fill(self.cache.path_template or "{path}", url)
        if not target.startswith("/"):
            target = "/" + target
        headers = {k: self._fill(v, url) for k, v in self.cache.headers}
        reply = await self.request(method, url, target=target, headers=headers)
        return self.check_purge_status(method, url, reply.status)
