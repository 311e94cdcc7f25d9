"""REST resources /api/sites, /api/providers and /api/purges: which URLs of which mapping are
cached where, and what the purger did about each change.

A site's secret (the HMAC key for listener notices) is shown once, in the answer to its
creation (or to a PATCH that sets a new one); everywhere else it reads "**********".
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from relaysync.errors import ConfigError
from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel, QueryInt
from relaysync.master.api._secrets import HIDDEN as MASK
from relaysync.master.api._secrets import refuse_masked
from relaysync.purge.site import CacheSpec, SiteSpec

logger = logging.getLogger(__name__)

HIDDEN = "**********"


class CacheIn(InputModel):
    name: str
    driver: Literal["varnish", "nginx", "squid", "http"]
    address: str = Field(
        description="where the cache answers HTTP: host:port, [IPv6]:port or https://host[:port]"
    )
    refresh: bool = Field(True, description="one-request refresh where the driver has one")
    accept_encodings: list[str] | None = Field(
        None,
        description='Accept-Encoding values ("" = none) each URL is refreshed, purged and '
        "confirmed under, one per variant the cache keeps; null: the driver's default",
    )
    tls_verify: bool = Field(True, description="https cache: check its certificate")
    method: str = Field("PURGE", description="http driver: method of the purge request")
    path_template: str = Field("{path}", description="http driver: {path} {host} {url}")
    headers: dict[str, str] = Field(
        default_factory=dict, description="http driver: sent with purges"
    )


class OriginIn(InputModel):
    server: str | None = Field(None, description="fleet server name or node id")
    url: str | None = Field(
        None, description="http://host:port of its web server, to confirm against"
    )


class SiteIn(InputModel):
    name: str
    provider: str = Field(description="content provider; created if new")
    mapping: str | None = Field(None, description="mapping id or name; none for outside origins")
    root: str = Field("", description="folder inside the mapping that the site serves")
    base_urls: list[str] = Field(min_length=1, description="http(s)://host[:port]")
    aliases: list[str] = Field(default_factory=list, description="more host[:port] names")
    path_prefix: str = "/"
    index_files: list[str] = Field(default_factory=lambda: ["index.html"])
    listings: bool = Field(
        False,
        description="the web server lists directories (autoindex): a change in a directory "
        "refreshes its listing page /dir/",
    )
    query_variants: StrictBool | None = Field(
        None,
        description="ban a changed file's query-string variants (/a.css?v=3) too, on the caches "
        "that take bans (Varnish); opt-in: null (the default) and false are off; true turns it "
        "on, and on a site with caches that cannot (nginx, Squid, http) adds a warning. Each "
        "changed file then costs one BAN per URL form (docs/caches.md)",
    )
    caches: list[CacheIn] = Field(default_factory=list)
    origins: list[OriginIn] = Field(
        default_factory=list, description="default: the mapping's targets"
    )
    secret: str | None = Field(
        None, description="HMAC key for listener notices; generated if absent"
    )


class SitePatch(InputModel):
    name: str | None = None
    provider: str | None = None
    mapping: str | None = None
    root: str | None = None
    base_urls: list[str] | None = None
    aliases: list[str] | None = None
    path_prefix: str | None = None
    index_files: list[str] | None = None
    listings: bool | None = None
    query_variants: StrictBool | None = None  # null (sent) resets it to the default: off
    caches: list[CacheIn] | None = None
    origins: list[OriginIn] | None = None
    secret: str | None = None


class CacheOut(BaseModel):
    name: str
    driver: str
    address: str
    refresh: bool
    accept_encodings: list[str]
    tls_verify: bool
    method: str
    path_template: str
    headers: dict[str, str]


class OriginOut(BaseModel):
    node_id: str
    name: str
    url: str


class SiteOut(BaseModel):
    id: int
    name: str
    provider: str
    mapping_id: int | None
    root: str
    base_urls: list[str]
    aliases: list[str]
    path_prefix: str
    index_files: list[str]
    listings: bool
    query_variants: bool | None
    caches: list[CacheOut]
    origins: list[OriginOut]
    secret: str
    warnings: list[str] = Field(
        default_factory=list, description="what to fix, e.g. confirmation off: no origin URL"
    )


class ProviderOut(BaseModel):
    id: int
    name: str
    sites: int


class PurgeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    site_id: int
    cache: str
    url: str
    action: str
    status: str
    confirmed: bool | None
    attempts: int
    at: float
    duration_ms: float
    detail: str


def _out(site: SiteSpec, *, show_secret: bool = False) -> SiteOut:
    return SiteOut(
        id=site.id,
        name=site.name,
        provider=site.provider,
        mapping_id=site.mapping_id,
        root=site.root,
        base_urls=list(site.base_urls),
        aliases=list(site.aliases),
        path_prefix=site.path_prefix,
        index_files=list(site.index_files),
        listings=site.listings,
        query_variants=site.query_variants,
        caches=[
            CacheOut(
                name=c.name,
                driver=c.driver,
                address=c.address,
                refresh=c.refresh,
                accept_encodings=list(c.encodings),
                tls_verify=c.tls_verify,
                method=c.method,
                path_template=c.path_template,
                headers={k: MASK for k in dict(c.headers)},  # purge API tokens: never sent back
            )
            for c in site.caches
        ],
        origins=[OriginOut(node_id=o.node_id, name=o.name, url=o.url) for o in site.origins],
        secret=site.secret if show_secret else HIDDEN,
        warnings=site.warnings(),
    )


# A masked header keeps its stored value only for the cache as it was: sent anywhere else
# (another address, driver, method or path), the purge API token would go to whoever is there.
_WHERE_HEADERS_GO = ("address", "driver", "method", "path_template")


def _keep_hidden_headers(caches: list[dict[str, Any]], current: SiteSpec) -> None:
    """A header sent back as the mask (a listing edited and sent back) keeps its stored value,
    from the cache of the same name, if that cache still sends its purges to the same place;
    the mask anywhere else is refused (it would replace the value, or send it elsewhere).

    Raises:
        ConfigError: a masked header of a new cache, of a header it did not have, or of a
            cache whose address, driver, method or path template changed.
    """
    stored = {c.name: c for c in current.caches}
    for cache in caches:
        headers = cache.get("headers") or {}
        old = stored.get(cache.get("name", ""))
        moved = old is not None and _moved(cache, old)
        for key, value in headers.items():
            if value != MASK or old is None or key not in dict(old.headers):
                continue
            if moved:
                raise ConfigError(
                    f"cache {old.name!r}: give header {key!r} again: the cache's "
                    f"{', '.join(moved)} changed, and a hidden value is only kept where it went "
                    "before"
                )
            headers[key] = dict(old.headers)[key]
        refuse_masked(headers, f"cache {cache.get('name', '')!r}'s headers")


def _moved(cache: dict[str, Any], old: CacheSpec) -> list[str]:
    """Which of the fields that say where purges go differ between `cache` (a PATCH's) and
    `old` (stored); a field left out takes CacheIn's default, as the store will."""
    defaults = CacheIn.model_fields
    return [
        name
        for name in _WHERE_HEADERS_GO
        if cache.get(name, defaults[name].default) != getattr(old, name)
    ]


def _sites_changed(request: Request, site: SiteSpec | None = None) -> None:
    """Tell the purger (if the master runs one) to re-read the sites now; log what `site`
    (created or changed) should fix."""
    if site is not None:
        for warning in site.warnings():
            logger.warning("site %s: %s", site.name, warning)
    purger = getattr(request.app.state, "purger", None)
    if purger is not None:
        purger.reload_sites()


def _fields(body: BaseModel, *, exclude_unset: bool) -> dict[str, Any]:
    fields = body.model_dump(exclude_unset=exclude_unset)
    # null means something for these: no mapping; query_variants back to its default (off)
    return {k: v for k, v in fields.items() if v is not None or k in ("mapping", "query_variants")}


def list_sites(context: Context) -> list[SiteOut]:
    """Every site, by id (secrets hidden)."""
    return [_out(s) for s in context.store.list_sites()]


def get_site(id_or_name: str, context: Context) -> SiteOut:
    """One site, by id or name (secret hidden)."""
    return _out(context.store.get_site(id_or_name))


def create_site(body: SiteIn, context: Context, request: Request) -> SiteOut:
    """Create a site; the answer shows its secret, the only time it is shown."""
    fields = _fields(body, exclude_unset=False)
    refuse_masked([c.get("headers", {}) for c in fields.get("caches", [])], "a cache's headers")
    site = context.store.create_site(**fields)
    _sites_changed(request, site)
    return _out(site, show_secret=True)


def update_site(id_or_name: str, body: SitePatch, context: Context, request: Request) -> SiteOut:
    """Change some fields of a site."""
    fields = _fields(body, exclude_unset=True)
    if "caches" in fields:
        _keep_hidden_headers(fields["caches"], context.store.get_site(id_or_name))
    site = context.store.update_site(id_or_name, **fields)
    _sites_changed(request, site)
    return _out(site, show_secret=bool(body.secret))  # a new secret only: "" is refused


def delete_site(id_or_name: str, context: Context, request: Request) -> None:
    """Delete a site, its queued purges and its purge log."""
    context.store.delete_site(id_or_name)
    _sites_changed(request)


def list_providers(context: Context) -> list[ProviderOut]:
    """Content providers, with how many sites each has."""
    return [
        ProviderOut(id=p.id, name=p.name, sites=p.sites) for p in context.store.list_providers()
    ]


def list_purges(
    context: Context,
    site: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: QueryInt = None,
) -> list[PurgeOut]:
    """Purge outcomes per URL per cache, newest first; page on with ?before=<id>."""
    rows = context.store.purge_log(site=site, limit=limit, before=before)
    return [PurgeOut.model_validate(r) for r in rows]
