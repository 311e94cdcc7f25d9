"""Sites in the store: providers, sites with their caches and origins, the purge queue and log.

`SiteStore` is mixed into Store: every method runs one transaction, like Store's own.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import _mappings
from relaysync.master.store._refs import row_id
from relaysync.master.store._site_tables import Provider, PurgeLogRow, PurgeQueueRow, Site
from relaysync.master.store.models import Change, MappingTarget, Server
from relaysync.purge.addresses import parse_cache_address, valid_host_port
from relaysync.purge.jobs import ACTIONS, PurgeItem, PurgeResult, QueuedPurge, Retry
from relaysync.purge.site import (
    DEFAULT_ACCEPT_ENCODINGS,
    DRIVER_NAMES,
    CacheSpec,
    OriginSpec,
    SiteSpec,
)

logger = logging.getLogger(__name__)

SITE_FIELDS = frozenset(
    {
        "name",
        "provider",
        "mapping",
        "root",
        "base_urls",
        "aliases",
        "path_prefix",
        "index_files",
        "listings",
        "query_variants",
        "caches",
        "origins",
        "secret",
    }
)
MIN_SECRET_CHARS = 16  # an HMAC key shorter than this is guessable
MAX_SECRET_CHARS = 128  # the column's size (_site_tables.py): checked here, not by the database
_METHOD = re.compile(r"[A-Z]{1,20}")  # fullmatch: "$" would let a final newline in


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderInfo:
    id: int
    name: str
    sites: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeLogEntry:
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


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 255 or name.isdigit():
        raise ConfigError(f"{what} {name!r} must be 1-255 characters and not all digits")
    return name


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not valid_host_port(parts.netloc):
        raise ConfigError(f"base URL {url!r} must be http(s)://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"base URL {url!r} must not have a path: use path_prefix")
    return f"{parts.scheme}://{parts.netloc.lower()}"


MAX_ACCEPT_ENCODINGS = 16  # each is one more refresh, purge and confirm per URL on the cache


def _check_encodings(name: str, raw: Any) -> list[str]:
    """A cache's `accept_encodings`: distinct one-line header values, "" for no header."""
    values = raw if raw is not None else []
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        values = [v.strip() for v in values]
    if (
        not isinstance(values, list)
        or len(values) > MAX_ACCEPT_ENCODINGS
        or any(not isinstance(v, str) or len(v) > 200 or "\n" in v or "\r" in v for v in values)
        or len(set(values)) != len(values)
    ):
        raise ConfigError(
            f"cache {name!r}: accept_encodings must be a list of at most "
            f'{MAX_ACCEPT_ENCODINGS} distinct Accept-Encoding values ("" for none)'
        )
    return list(values)


def _check_cache(raw: dict[str, Any]) -> dict[str, Any]:
    name = _check_name(raw.get("name"), "cache name")
    driver = raw.get("driver")
    if driver not in DRIVER_NAMES:
        raise ConfigError(
            f"cache {name!r}: driver {driver!r} must be one of {', '.join(DRIVER_NAMES)}"
        )
    try:
        parse_cache_address(str(raw.get("address", "")))
    except ConfigError as exc:
        raise ConfigError(f"cache {name!r}: {exc.args[0]}") from None
    method = str(raw.get("method") or "PURGE").upper()
    if not _METHOD.fullmatch(method):
        raise ConfigError(f"cache {name!r}: method {method!r} is not an HTTP method")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or any(
        "\n" in f"{k}{v}" or "\r" in f"{k}{v}" for k, v in headers.items()
    ):
        raise ConfigError(f"cache {name!r}: headers must be a name -> value object, one line each")
    encodings = _check_encodings(name, raw.get("accept_encodings"))
    checked = {
        "name": name,
        "driver": driver,
        "address": str(raw["address"]),
        "refresh": bool(raw.get("refresh", True)),
        "method": method,
        "path_template": str(raw.get("path_template") or "{path}"),
        "headers": {str(k): str(v) for k, v in headers.items()},
    }
    if not raw.get("tls_verify", True):  # kept only when off: a row without it reads as on,
        checked["tls_verify"] = False  # and rows saved before the setting stay as they were
    if encodings and tuple(encodings) != DEFAULT_ACCEPT_ENCODINGS[driver]:
        checked["accept_encodings"] = encodings  # likewise kept only when not the default
    return checked


def _check_origin(session: Session, raw: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    if raw.get("server"):
        out["node_id"] = _mappings.resolve_server(session, str(raw["server"])).node_id
    if raw.get("url"):
        out["url"] = _check_base_url(str(raw["url"]))
    if not out:
        raise ConfigError("an origin needs a server, a url, or both")
    return out


def _validate(session: Session, fields: dict[str, Any], site_id: int | None) -> dict[str, Any]:
    v: dict[str, Any] = {"name": _check_name(fields["name"], "site name")}
    clash = session.scalar(select(Site.id).where(Site.name == v["name"]))
    if clash is not None and clash != site_id:
        raise ConfigError(f"site name {v['name']!r} is already used by site {clash}")
    mapping = fields.get("mapping")
    v["mapping_id"] = None if mapping in (None, "") else _mappings.find_mapping(session, mapping).id
    root = str(fields.get("root") or "").strip("/")
    if ".." in root.split("/") or "\0" in root:
        raise ConfigError(f"site root {root!r} must be a relative folder without '..'")
    v["root"] = root
    if not fields.get("base_urls"):
        raise ConfigError(f"site {v['name']!r} needs at least one base URL")
    v["base_urls"] = [_check_base_url(u) for u in fields["base_urls"]]
    for alias in fields.get("aliases") or ():
        if not valid_host_port(alias):
            raise ConfigError(f"host alias {alias!r} must be host[:port]")
    v["aliases"] = [a.lower() for a in fields.get("aliases") or ()]
    prefix = str(fields.get("path_prefix") or "/")
    if not prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(f"path prefix {prefix!r} must start with / and have no '..'")
    v["path_prefix"] = prefix
    v["index_files"] = [str(i) for i in fields.get("index_files", ["index.html"])]
    listings = fields.get("listings", False)
    if not isinstance(listings, bool):
        raise ConfigError(f"site {v['name']!r}: listings must be true or false, not {listings!r}")
    v["listings"] = listings
    variants = fields.get("query_variants")
    if variants is not None and not isinstance(variants, bool):
        raise ConfigError(
            f"site {v['name']!r}: query_variants must be true, false or null, not {variants!r}"
        )
    v["query_variants"] = variants
    caches = [_check_cache(dict(c)) for c in fields.get("caches") or ()]
    if len({c["name"] for c in caches}) != len(caches):
        raise ConfigError(f"site {v['name']!r}: two caches have the same name")
    v["caches"] = caches
    v["origins"] = [_check_origin(session, dict(o)) for o in fields.get("origins") or ()]
    return v


def _provider(session: Session, name: str) -> Provider:
    _check_name(name, "provider name")
    row = session.scalars(select(Provider).where(Provider.name == name)).first()
    if row is None:
        row = Provider(name=name, created_at=time.time())
        session.add(row)
        session.flush()
    return row


def find_site(session: Session, ref: int | str) -> Site:
    row: Site | None = None
    if (rid := row_id(ref)) is not None:
        row = session.get(Site, rid)
    if row is None and isinstance(ref, str):
        row = session.scalars(select(Site).where(Site.name == ref)).first()
    if row is None:
        raise NotFound("Site", ref)
    return row


def _spec(session: Session, row: Site, names: dict[str, str]) -> SiteSpec:
    origins = [
        OriginSpec(
            node_id=o.get("node_id", ""),
            name=names.get(o.get("node_id", ""), ""),
            url=o.get("url", ""),
        )
        for o in row.origins
    ]
    if row.mapping_id is not None and not any(o.node_id for o in origins):
        targets = session.scalars(
            select(MappingTarget.node_id).where(MappingTarget.mapping_id == row.mapping_id)
        )
        origins += [OriginSpec(node_id=t, name=names.get(t, "")) for t in targets]
    provider = session.get(Provider, row.provider_id)
    return SiteSpec(
        id=row.id,
        name=row.name,
        provider=provider.name if provider else "",
        mapping_id=row.mapping_id,
        root=row.root,
        base_urls=tuple(row.base_urls),
        aliases=tuple(row.aliases),
        path_prefix=row.path_prefix,
        index_files=tuple(row.index_files),
        listings=row.listings,
        query_variants=row.query_variants,
        caches=tuple(
            CacheSpec(
                name=c["name"],
                driver=c["driver"],
                address=c["address"],
                refresh=c["refresh"],
                accept_encodings=tuple(c.get("accept_encodings") or ()),
                tls_verify=c.get("tls_verify", True),
                method=c["method"],
                path_template=c["path_template"],
                headers=tuple(sorted(c["headers"].items())),
            )
            for c in row.caches
        ),
        origins=tuple(origins),
        secret=row.secret,
    )


def _under(query: Select[str], prefix: str) -> Select[str]:
    """`query` of job-log paths restricted to those under directory `prefix` ("" or "/": all)."""
    directory = prefix.strip("/")
    if not directory:
        return query
    # mapping paths are relative ("a/b.html"): no leading slash to match
    like = directory.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return query.where(Change.path.like(like + "/%", escape="\\"))


def _specs(session: Session, rows: Sequence[Site]) -> list[SiteSpec]:
    names = dict(session.execute(select(Server.node_id, Server.name)).all())
    return [_spec(session, r, names) for r in rows]


def check_secret(secret: str) -> str:
    """Return `secret` if it may be a site's HMAC key.

    Raises:
        ConfigError: shorter than MIN_SECRET_CHARS or longer than MAX_SECRET_CHARS.
    """
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise ConfigError(
            f"a site secret needs {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters"
        )
    return secret


class SiteStore:
    """Store methods for sites and purges (mixed into Store)."""

    def _read(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _write(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    # --- Sites ---

    def create_site(self, **fields: Any) -> SiteSpec:
        """Create a site (and its provider if new); a secret is generated unless given.

        Raises:
            ConfigError: a bad field; NotFound: an unknown mapping or server.
        """
        unknown = set(fields) - SITE_FIELDS
        if unknown or "name" not in fields or "provider" not in fields:
            raise ConfigError(f"site fields {sorted(unknown)} unknown, or name/provider missing")
        secret = check_secret(fields.get("secret") or secrets.token_urlsafe(32))
        with self._write("create site") as session:
            v = _validate(session, fields, None)
            now = time.time()
            row = Site(
                provider_id=_provider(session, fields["provider"]).id,
                secret=secret,
                created_at=now,
                updated_at=now,
                **v,
            )
            session.add(row)
            session.flush()
            return _specs(session, [row])[0]

    def update_site(self, ref: int | str, **fields: Any) -> SiteSpec:
        """Change some fields of a site (those of create_site)."""
        unknown = set(fields) - SITE_FIELDS
        if unknown:
            raise ConfigError(f"site fields {sorted(unknown)} cannot be changed")
        with self._write("update site") as session:
            row = find_site(session, ref)
            merged = {
                "name": row.name,
                "mapping": row.mapping_id,
                "root": row.root,
                "base_urls": row.base_urls,
                "aliases": row.aliases,
                "path_prefix": row.path_prefix,
                "index_files": row.index_files,
                "listings": row.listings,
                "query_variants": row.query_variants,
                "caches": row.caches,
                "origins": [{"server": o.get("node_id"), "url": o.get("url")} for o in row.origins],
                **fields,
            }
            for key, value in _validate(session, merged, row.id).items():
                setattr(row, key, value)
            if "provider" in fields:
                row.provider_id = _provider(session, fields["provider"]).id
            if "secret" in fields:  # "" too: refused, never "keep the old one"
                row.secret = check_secret(fields["secret"])
            row.updated_at = time.time()
            session.flush()
            return _specs(session, [row])[0]

    def delete_site(self, ref: int | str) -> None:
        """Delete a site, its queued purges and its purge log."""
        with self._write("delete site") as session:
            row = find_site(session, ref)
            session.execute(delete(PurgeQueueRow).where(PurgeQueueRow.site_id == row.id))
            session.execute(delete(PurgeLogRow).where(PurgeLogRow.site_id == row.id))
            session.delete(row)

    def get_site(self, ref: int | str) -> SiteSpec:
        """Return one site by id or name. Raises NotFound."""
        with self._read("get site") as session:
            return _specs(session, [find_site(session, ref)])[0]

    def list_sites(self) -> list[SiteSpec]:
        """Return every site, by id, origins resolved (default: the mapping's targets)."""
        with self._read("list sites") as session:
            return _specs(session, list(session.scalars(select(Site).order_by(Site.id))))

    def list_providers(self) -> list[ProviderInfo]:
        with self._read("list providers") as session:
            counts = dict(
                session.execute(
                    select(Site.provider_id, func.count()).group_by(Site.provider_id)
                ).all()
            )
            return [
                ProviderInfo(id=p.id, name=p.name, sites=counts.get(p.id, 0))
                for p in session.scalars(select(Provider).order_by(Provider.name))
            ]

    def server_states(self) -> dict[str, str]:
        """Return node id -> up | down | unknown for every server."""
        with self._read("server states") as session:
            return dict(session.execute(select(Server.node_id, Server.state)).all())

    def changed_paths_under(self, mapping_id: int, prefix: str) -> list[str]:
        """Return the distinct paths the job log knows under directory `prefix` of a mapping.

        An empty prefix (or "/") is the mapping's root: every path. All of them, however many:
        the purger purges them one by one on caches without bans, which would keep serving
        any path left out.
        """
        query = select(Change.path).distinct().where(Change.mapping_id == mapping_id)
        with self._read("changed paths") as session:
            return list(session.scalars(_under(query, prefix).order_by(Change.path)))

    def made_dirs_under(self, mapping_id: int, prefix: str) -> list[str]:
        """Return the distinct directories the job log saw made (mkdir) under `prefix` of a
        mapping, "" its root: the purger purges their listings when the prefix goes, an empty
        one being named by no file path."""
        query = select(Change.path).distinct().where(Change.mapping_id == mapping_id)
        query = _under(query.where(Change.op == "mkdir"), prefix)
        with self._read("made directories") as session:
            return list(session.scalars(query.order_by(Change.path)))

    # --- Purge queue and log ---

    def enqueue_purges(self, items: Sequence[PurgeItem]) -> list[QueuedPurge]:
        """Make purges durable; return them with their queue ids."""
        now = time.time()
        with self._write("enqueue purges") as session:
            rows = [
                PurgeQueueRow(
                    site_id=i.site_id,
                    cache=i.cache,
                    url=i.url,
                    action=i.action,
                    attempts=0,
                    next_at=now,
                    created_at=now,
                    last_error="",
                )
                for i in items
            ]
            session.add_all(rows)
            session.flush()
            return [
                QueuedPurge(id=r.id, item=i, attempts=0, next_at=now)
                for r, i in zip(rows, items, strict=True)
            ]

    def pending_purges(self) -> list[QueuedPurge]:
        """Return every queued purge (after a restart), oldest first."""
        with self._read("pending purges") as session:
            return [
                QueuedPurge(
                    id=r.id,
                    attempts=r.attempts,
                    next_at=r.next_at,
                    item=PurgeItem(
                        site_id=r.site_id,
                        cache=r.cache,
                        url=r.url,
                        action=r.action if r.action in ACTIONS else "refresh",  # type: ignore[arg-type]
                    ),
                )
                for r in session.scalars(select(PurgeQueueRow).order_by(PurgeQueueRow.id))
            ]

    def finish_purges(
        self, done: Sequence[int], results: Sequence[PurgeResult], retries: Sequence[Retry]
    ) -> None:
        """In one transaction: drop finished purges, log results, reschedule retries."""
        with self._write("finish purges") as session:
            if done:
                session.execute(delete(PurgeQueueRow).where(PurgeQueueRow.id.in_(list(done))))
            sites = {r.item.site_id for r in results}
            alive = (
                set(session.scalars(select(Site.id).where(Site.id.in_(sites)))) if sites else set()
            )
            session.add_all(
                PurgeLogRow(
                    site_id=r.item.site_id,
                    cache=r.item.cache,
                    url=r.item.url,
                    action=r.item.action,
                    status=r.status,
                    confirmed=r.confirmed,
                    attempts=r.attempts,
                    at=r.at,
                    duration_ms=r.duration_ms,
                    detail=r.detail[:2000],
                )
                for r in results
                if r.item.site_id in alive
            )
            for retry in retries:
                session.execute(
                    update(PurgeQueueRow)
                    .where(PurgeQueueRow.id == retry.id)
                    .values(
                        attempts=retry.attempts,
                        next_at=retry.next_at,
                        last_error=retry.error[:2000],
                    )
                )

    def purge_log(
        self, *, site: int | str | None = None, limit: int = 100, before: int | None = None
    ) -> list[PurgeLogEntry]:
        """Return purge outcomes, newest first."""
        with self._read("purge log") as session:
            q = (
                select(PurgeLogRow)
                .order_by(PurgeLogRow.id.desc())
                .limit(max(1, min(limit, 10_000)))
            )
            if site is not None:
                q = q.where(PurgeLogRow.site_id == find_site(session, site).id)
            if before is not None:
                q = q.where(PurgeLogRow.id < before)
            return [
                PurgeLogEntry(
                    id=r.id,
                    site_id=r.site_id,
                    cache=r.cache,
                    url=r.url,
                    action=r.action,
                    status=r.status,
                    confirmed=r.confirmed,
                    attempts=r.attempts,
                    at=r.at,
                    duration_ms=r.duration_ms,
                    detail=r.detail,
                )
                for r in session.scalars(q)
            ]

    def queued_purges(self) -> int:
        with self._read("queued purges") as session:
            return int(session.scalar(select(func.count()).select_from(PurgeQueueRow)) or 0)
