"""The purger's intake: released changes planned into purge items and queued, in order.

A change leaves the intake only once its items are in the store's purge queue; the reports
waiting for it are then acknowledged (purge/holds.py). Planning some changes reads the store
(the paths under a deleted directory on caches without bans, the directories made under it).

Error handling:
    A store error planning a change keeps it at the head and retries it with backoff, the
    changes behind it waiting (a store that is down fails them all alike). After
    STORE_FAILURES_IN_ORDER failures in a row the change is set aside: the changes behind it go
    first, and it is tried again on its own backoff (up to the purger's retry_max_s) until its
    planning succeeds, so that one change whose query keeps failing (a statement timeout on a
    directory of millions of paths) does not hold up every purge and every acknowledgement of
    the site for as long as it fails. Its own reports stay unacknowledged meanwhile: a kill
    then sends them again, and the change is planned afresh.
    Anything else raised planning a change is a bug: logged, told to `notify`, the change put
    behind the others and its reports acknowledged (sent again, they would meet the same bug).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING

import anyio

from relaysync.errors import StoreError
from relaysync.purge.due import UrlKey
from relaysync.purge.jobs import Action, PurgeItem
from relaysync.purge.listings import ListingRefreshes
from relaysync.purge.ordering import Released
from relaysync.purge.planner import prune_bans, url_items
from relaysync.purge.site import SiteSpec

logger = logging.getLogger(__name__)

STORE_FAILURES_IN_ORDER = 3  # store errors planning one change before those behind it go first


def _listing_items(planned: list[PurgeItem], listings: ListingRefreshes) -> list[PurgeItem]:
    """The refreshes of a batch's listings, but for a URL whose last item planned in the batch
    is a refresh already (`/dir/` of a written index file): it would be refreshed twice."""
    last: dict[UrlKey, Action] = {(i.site_id, i.cache, i.url): i.action for i in planned}
    out: list[PurgeItem] = []
    for site, urls in listings.urls():
        for cache in site.caches:
            fresh = [u for u in urls if last.get((site.id, cache.name, u)) != "refresh"]
            out += url_items(site.id, cache.name, fresh, "refresh")
    return out


class PurgeIntake:
    """Purger methods for the intake (mixed into Purger, which owns the state)."""

    _released: deque[Released]
    _sites: dict[int, SiteSpec]
    _unplannable: Released | None
    _intake_wake: anyio.Event

    if TYPE_CHECKING:  # Purger's

        async def _plan(self, site: SiteSpec, change: Released) -> list[PurgeItem]: ...

        async def _enqueue(self, items: list[PurgeItem]) -> None: ...

        def _backoff_s(self, failures: int) -> float: ...

        def _failing(self, what: str, exc: Exception, failures: int) -> None: ...

    async def _intake_loop(self) -> None:
        failures = 0  # bugs in a row
        while True:
            await self._until_due()
            self._intake_wake = anyio.Event()
            try:
                await self._intake()
                failures = 0
                continue
            except Exception as exc:
                failures += 1
                self._failing("planning a change", exc, failures)
                change, self._unplannable = self._unplannable, None
                if change is not None:
                    self._to_back(change)
            await anyio.sleep(self._backoff_s(failures))

    def _to_back(self, change: Released) -> None:
        """`change` failed planning (a bug): it stays in the intake, behind the others; its
        reports are acknowledged (sent again, they would meet the same bug), as they were
        before holds."""
        if not any(c is change for c in self._released):
            return
        kept = [c for c in self._released if c is not change]
        self._released.clear()
        self._released.extend([*kept, change])
        change.waiters.mark_queued()

    async def _until_due(self) -> None:
        """Wait until the intake has a change to plan now, or a change is released."""
        while True:
            now = time.monotonic()
            due_at = self._next_due(now)
            if due_at is not None and due_at <= now:
                return
            with anyio.move_on_after(math.inf if due_at is None else due_at - now):
                await self._intake_wake.wait()
                return

    def _next_due(self, now: float) -> float | None:
        """When the intake next has a change to plan (None: it holds none). A change retried
        after a store error holds back those behind it until set aside."""
        due_at: float | None = None
        for change in self._released:
            if change.retry.at <= now:
                return now
            due_at = change.retry.at if due_at is None else min(due_at, change.retry.at)
            if change.retry.failures < STORE_FAILURES_IN_ORDER:
                break
        return due_at

    async def _intake(self) -> None:
        """Plan and queue the released changes that are due; one leaves `_released` only once
        it is queued. The directory listings they alter are refreshed after them, each once.

        Raises:
            anything but StoreError: planning the change now at the head failed (a bug); the
                changes planned before it are queued.
        """
        items: list[PurgeItem] = []
        listings = ListingRefreshes()
        planned: list[Released] = []
        self._unplannable = None
        failure: Exception | None = None
        for change in list(self._released):
            if change.retry.at > time.monotonic():
                if change.retry.failures < STORE_FAILURES_IN_ORDER:
                    break  # retried in order: nothing behind it goes first
                continue  # set aside: tried again on its own time
            site = self._sites.get(change.site_id)
            try:
                if site is not None:
                    items += await self._plan(site, change)
                    listings.add(site, change)
            except StoreError as exc:
                if not self._store_failed(change, exc):
                    break
                continue
            except Exception as exc:  # noqa: BLE001 - queue what was planned, then re-raise
                failure = exc
                self._unplannable = change
                break
            planned.append(change)
        items += _listing_items(items, listings)
        await self._enqueue(prune_bans(items))  # one ban per URL; no variant under a prefix
        self._take_out(planned)
        if failure is not None:
            raise failure

    def _store_failed(self, change: Released, exc: StoreError) -> bool:
        """Note a store error planning `change`: it is tried again after a backoff of its own.
        Return whether it is set aside (the changes behind it may go first)."""
        change.retry.failures += 1
        wait_s = self._backoff_s(change.retry.failures)
        change.retry.at = time.monotonic() + wait_s
        aside = change.retry.failures >= STORE_FAILURES_IN_ORDER
        logger.warning(
            "purge planning of %s %r could not read the store (attempt %d), will retry in"
            " %.1f s%s: %s",
            change.op,
            change.path,
            change.retry.failures,
            wait_s,
            "; the changes behind it go first" if aside else "",
            exc,
        )
        return aside

    def _take_out(self, planned: list[Released]) -> None:
        """`planned` are queued: out of the intake, their reports' holds told."""
        if not planned:
            return
        gone = {id(change) for change in planned}  # by identity: equal changes may differ
        kept = [change for change in self._released if id(change) not in gone]
        self._released.clear()
        self._released.extend(kept)
        for change in planned:
            change.waiters.mark_queued()
