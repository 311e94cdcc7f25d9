"""The purge queue and log in the store: purges made durable, retried, and their outcomes.

`PurgeQueueStore` is mixed into Store: every method runs one transaction, like Store's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from relaysync.master.store._site_tables import PurgeLogRow, PurgeQueueRow, Site
from relaysync.master.store._sites import find_site
from relaysync.purge.jobs import ACTIONS, PurgeItem, PurgeResult, QueuedPurge, Retry

logger = logging.getLogger(__name__)


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


class PurgeQueueStore:
    """Store methods for the purge queue and log (mixed into Store)."""

    def _read(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _write(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def enqueue_purges(self, items: Sequence[PurgeItem]) -> list[QueuedPurge]:
        """Make purges durable; return them with their queue ids. Items of a site deleted
        meanwhile are left out (not returned): their rows would break the queue's reference to
        the site, a failure the purger would retry for ever, queueing nothing else."""
        now = time.time()
        with self._write("enqueue purges") as session:
            wanted = {i.site_id for i in items}
            there = set(session.scalars(select(Site.id).where(Site.id.in_(wanted))))
            if len(there) < len(wanted):
                gone = len([i for i in items if i.site_id not in there])
                logger.info(
                    "%d purges of deleted sites %s not queued", gone, sorted(wanted - there)
                )
            items = [i for i in items if i.site_id in there]
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
