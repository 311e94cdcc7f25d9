"""Sites in the store: providers, and sites with their caches and origins.

`SiteStore` is mixed into Store: every method runs one transaction, like Store's own. A site's
fields are checked by _site_checks.py; its purge queue and log are _purge_queue.py.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store._refs import row_id
from relaysync.master.store._site_checks import SITE_FIELDS, check_name, check_secret, validate_site
from relaysync.master.store._site_tables import Provider, PurgeLogRow, PurgeQueueRow, Site
from relaysync.master.store.models import Change, MappingTarget, Server
from relaysync.purge.site import CacheSpec, OriginSpec, SiteSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderInfo:
    id: int
    name: str
    sites: int


def _provider(session: Session, name: str) -> Provider:
    check_name(name, "provider name")
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
            v = validate_site(session, fields, None)
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
            for key, value in validate_site(session, merged, row.id).items():
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
