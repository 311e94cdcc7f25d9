"""A site as the purger sees it: base URLs of a folder mapping, its caches and its origins.

The master's store hands these out; purge/ never reads the store's rows itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DriverName = Literal["varnish", "nginx", "squid", "http"]
DRIVER_NAMES: tuple[str, ...] = ("varnish", "nginx", "squid", "http")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSpec:
    """One cache server in front of a site's origins."""

    name: str
    driver: DriverName
    address: str  # host:port where the cache answers HTTP (and takes purges)
    refresh: bool = True  # use the driver's one-request refresh where it has one
    # Accept-Encoding values ("" = no header) under which each URL is refreshed, purged and
    # confirmed: one per variant the cache may hold. Empty: the driver's default (drivers/_base.py)
    accept_encodings: tuple[str, ...] = ()
    method: str = "PURGE"  # http driver: the purge request's method
    path_template: str = "{path}"  # http driver: {path} {host} {url} are filled in
    headers: tuple[tuple[str, str], ...] = ()  # sent with every purge request; values as templates


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginSpec:
    """A server the caches fetch from; `node_id` empty for an origin outside the fleet."""

    node_id: str = ""
    name: str = ""
    url: str = ""  # http://host:port of its web server, to confirm against; "" = unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteSpec:
    id: int
    name: str
    provider: str
    mapping_id: int | None  # None: the content comes from outside the fleet (listener only)
    root: str  # folder inside the mapping that the site serves, "" for all of it
    base_urls: tuple[str, ...]  # scheme://host[:port]
    aliases: tuple[str, ...]  # more host[:port] names under which the same content is served
    path_prefix: str  # URL path under which `root` is served, "/" or "/static/"
    index_files: tuple[str, ...]
    caches: tuple[CacheSpec, ...]
    origins: tuple[OriginSpec, ...]
    secret: str = field(default="", repr=False)  # HMAC key for listener notices
    # The web server lists directories without an index file (nginx `autoindex on;`, Apache
    # mod_autoindex): a change in a directory refreshes its listing page (purge/listings.py).
    listings: bool = False

    def origin_nodes(self) -> frozenset[str]:
        """Node ids of the fleet servers among the origins."""
        return frozenset(o.node_id for o in self.origins if o.node_id)
