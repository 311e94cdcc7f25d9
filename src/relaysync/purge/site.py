"""A site as the purger sees it: base URLs of a folder mapping, its caches and its origins.

The master's store hands these out; purge/ never reads the store's rows itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DriverName = Literal["varnish", "nginx", "squid", "http"]
DRIVER_NAMES: tuple[str, ...] = ("varnish", "nginx", "squid", "http")

# Accept-Encoding values ("" = no header: curl, bots) nginx and Squid are refreshed, purged and
# confirmed under by default when an answer varies on it: what browsers and common clients send
BROWSER_ACCEPT_ENCODING = "gzip, deflate, br, zstd"
VARIANT_ACCEPT_ENCODINGS: tuple[str, ...] = (
    "",
    "identity",
    "gzip",
    "gzip, deflate",
    "gzip, deflate, br",
    BROWSER_ACCEPT_ENCODING,
    "deflate, gzip, br, zstd",
)
# Varnish folds Accept-Encoding itself and a PURGE or BAN drops every variant; a purge API
# (http) drops the URL whatever the variant: one value each, as browsers send it
DEFAULT_ACCEPT_ENCODINGS: dict[str, tuple[str, ...]] = {
    "varnish": (BROWSER_ACCEPT_ENCODING,),
    "nginx": VARIANT_ACCEPT_ENCODINGS,
    "squid": VARIANT_ACCEPT_ENCODINGS,
    "http": (BROWSER_ACCEPT_ENCODING,),
}
# Drivers whose caches drop every URL under a prefix in one request (drivers' `can_ban`): the
# only ones that can drop a changed file's query-string variants (`/a.css?v=3`), whose
# URLs the purger cannot list. Debian's nginx cache-purge module (2.3) has no partial-key
# purge (`PURGE /a.css?*` answers 404 and keeps them, measured), Squid none over HTTP.
BAN_DRIVERS: frozenset[str] = frozenset({"varnish"})


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSpec:
    """One cache server in front of a site's origins."""

    name: str
    driver: DriverName
    address: str  # [http(s)://]host:port where it answers HTTP and takes purges (addresses.py)
    tls_verify: bool = True  # an https cache's certificate is checked (off: self-signed, say)
    refresh: bool = True  # use the driver's one-request refresh where it has one
    # Accept-Encoding values ("" = no header) under which each URL is refreshed, purged and
    # confirmed: one per variant the cache may hold. Empty: the driver's default (above)
    accept_encodings: tuple[str, ...] = ()
    method: str = "PURGE"  # http driver: the purge request's method
    path_template: str = "{path}"  # http driver: {path} {host} {url} are filled in
    headers: tuple[tuple[str, str], ...] = ()  # sent with every purge request; values as templates

    @property
    def encodings(self) -> tuple[str, ...]:
        """The Accept-Encoding values this cache is worked on under (the first one always)."""
        return self.accept_encodings or DEFAULT_ACCEPT_ENCODINGS[self.driver]


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
    # Drop a changed file's query-string variants (`/a.css?v=3`, `/a.css?utm_source=x`) too:
    # a BAN of `/a.css?` after its refresh or purge, on caches that take bans. Opt-in (each
    # is one more entry on Varnish's ban list, docs/caches.md): None (the default, and every
    # site stored before) and False: off; True: on (a warning names the caches that cannot)
    query_variants: bool | None = None

    def unconfirmed(self) -> bool:
        """No origin has a URL: nothing to compare a cache's copy with, so nothing is confirmed."""
        return not any(o.url for o in self.origins)

    def bans_query_variants(self, cache: CacheSpec) -> bool:
        """Whether `cache` gets a BAN of each changed file's query-string variants: only when
        the site asks for them (True; None is off) and the cache takes bans."""
        return self.query_variants is True and cache.driver in BAN_DRIVERS

    def warnings(self) -> list[str]:
        """What the operator should fix in this site, as plain sentences (API, log)."""
        return self._confirm_warnings() + self._query_variant_warnings()

    def _query_variant_warnings(self) -> list[str]:
        """query_variants asked for (true) on caches that cannot purge by prefix."""
        cannot = [c for c in self.caches if self.query_variants and c.driver not in BAN_DRIVERS]
        if not cannot:
            return []
        names = ", ".join(f"{c.name} ({c.driver})" for c in cannot)
        return [
            f"query_variants is on, but caches {names} cannot purge by prefix: their copies of "
            "a changed file under a query string (/a.css?v=3) stay until they expire; only "
            "Varnish caches get them banned. Key those caches on the path without the query "
            "(nginx: proxy_cache_key $uri; with the same key in proxy_cache_purge, see "
            'docs/caches.md), or set "query_variants" to false or null (off, the default) to '
            "silence this"
        ]

    def _confirm_warnings(self) -> list[str]:
        if not self.unconfirmed():
            return []
        return [
            "confirmation is off: no origin of this site has a URL, so the purger cannot check "
            "that a cache serves the new bytes (a cache that ignores a refresh goes unnoticed); "
            'set each origin\'s web server URL, e.g. "origins": [{"server": "<target>", '
            '"url": "http://<its address>:<port>"}]'
        ]

    def origin_nodes(self) -> frozenset[str]:
        """Node ids of the fleet servers among the origins."""
        return frozenset(o.node_id for o in self.origins if o.node_id)


def specs_by_address(sites: dict[int, SiteSpec]) -> dict[str, frozenset[CacheSpec]]:
    """Each cache address and the settings every site gives it (sites may share a cache)."""
    out: dict[str, set[CacheSpec]] = {}
    for site in sites.values():
        for cache in site.caches:
            out.setdefault(cache.address, set()).add(cache)
    return {address: frozenset(specs) for address, specs in out.items()}
