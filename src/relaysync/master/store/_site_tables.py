"""The store's tables for cache synchronization: providers, sites, the purge queue and purge log.

They live beside models.py on the same declarative Base; migration 0002_sites creates them
(0014_site_listings adds `sites.listings`, 0019_site_query_variants `sites.query_variants`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from relaysync.master.store.models import BIG_ID, NAME, Base


class Provider(Base):
    """A content provider: several share a fleet, each with its own sites and credentials."""

    __tablename__ = "providers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class Site(Base):
    """A mapping (or an origin outside the fleet) served under base URLs, through caches."""

    __tablename__ = "sites"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused (0013_sqlite_ids)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    provider_id: Mapped[int] = mapped_column(Integer, ForeignKey("providers.id"))
    mapping_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="SET NULL"), nullable=True
    )
    root: Mapped[str] = mapped_column(Text, default="")
    base_urls: Mapped[list[str]] = mapped_column(JSON, default=list)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    path_prefix: Mapped[str] = mapped_column(Text, default="/")
    index_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The web server lists directories (autoindex): changes refresh `/dir/` (0014_site_listings)
    listings: Mapped[bool] = mapped_column(Boolean, default=False)
    # Ban a changed file's query-string variants (0019_site_query_variants): True on (caches
    # that take bans); None (the default, every site stored before) and False off
    query_variants: Mapped[bool | None] = mapped_column(Boolean, nullable=True, default=None)
    caches: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    origins: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    # The listener must verify HMACs with it, so the secret itself is kept (the API never shows it
    # after creation); protect the store like the CA key beside it.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PurgeQueueRow(Base):
    """A purge not yet done: kept until the cache confirms it, retried with backoff."""

    __tablename__ = "purge_queue"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused (0013_sqlite_ids)

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    site_id: Mapped[int] = mapped_column(Integer, ForeignKey("sites.id", ondelete="CASCADE"))
    cache: Mapped[str] = mapped_column(NAME)
    url: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16))  # refresh | purge | ban
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str] = mapped_column(Text, default="")


class PurgeLogRow(Base):
    """One purge outcome per URL per cache: the job log of cache synchronization."""

    __tablename__ = "purge_log"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    site_id: Mapped[int] = mapped_column(Integer, ForeignKey("sites.id", ondelete="CASCADE"))
    cache: Mapped[str] = mapped_column(NAME)
    url: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(
        String(32)
    )  # refreshed purged not_cached banned refused failed stale
    confirmed: Mapped[bool | None] = mapped_column(
        Boolean, nullable=True
    )  # None: no origin to compare
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    at: Mapped[float] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_purge_log_site", "site_id", "id"),)
