"""Generic HTTP cache: a configured purge request (method, path template, headers), then a
warming GET. Templates may use {path} (the percent-encoded request target), {host} and {url}.
Filled into a template's query, `& + = ;` of the value are percent-encoded too: the target keeps
them literal, as browsers send them, and in a query they would split the parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from relaysync.purge.drivers._base import Driver
from relaysync.purge.urls import Url

QUERY_ESCAPES = str.maketrans({"&": "%26", "+": "%2B", "=": "%3D", ";": "%3B"})


def _as_is(value: str) -> str:
    return value


def _query_value(value: str) -> str:
    return value.translate(QUERY_ESCAPES)


def _fill(template: str, url: Url, escape: Callable[[str], str]) -> str:
    return (
        template.replace("{path}", escape(url.target))
        .replace("{host}", escape(url.host))
        .replace("{url}", escape(str(url)))
    )


class GenericHttp(Driver):
    name: ClassVar[str] = "http"
    refused_advice: ClassVar[str] = (
        "its purge endpoint must accept the master ({ip}): check the cache's access rules and "
        "this cache entry's method, path_template and headers (an API token?)"
    )

    def _target(self, template: str, url: Url) -> str:
        path, sep, query = template.partition("?")
        return _fill(path, url, _as_is) + sep + _fill(query, url, _query_value)

    async def purge_variant(self, url: Url, encoding: str | None = None) -> str:
        method = self.cache.method or "PURGE"
        target = self._target(self.cache.path_template or "{path}", url)
        if not target.startswith("/"):
            target = "/" + target
        headers = {k: _fill(v, url, _as_is) for k, v in self.cache.headers}
        reply = await self.request(method, url, target=target, headers=headers, encoding=encoding)
        return self.check_purge_status(method, url, reply)
