"""The purger's intake: released changes planned into purge items and queued, in order.

A change leaves the intake only once its items are in the store's purge queue; the reports
waiting for it are then acknowledged (purge/holds.py). Planning some changes reads the store
(the paths under a deleted directory on caches without bans, the directories made under it).

Error handling:
    A store error planning a change sets it aside: the changes behind it go on, and the
    changes set aside are planned again in a task of their own, the oldest first, one query at
    a time with backoff while it fails (a store that is down gets one query per backoff,
    however many wait). So one change whose query keeps failing, or fails only after minutes
    (a statement timeout over a directory of millions of paths), holds up no other purge. Its
    own reports stay unacknowledged until it is queued (acknowledgements count up per
    session: so do the later reports of its agents' sessions); a kill sends them again, and
    the change is planned afresh. Purges of different changes commute (a refresh fetches what
    the origins hold now, a purge drops a copy), so a change queued late is still right.
    Anything else raised planning a change is a bug: logged, told to `notify`, the change put
    behind the others and its reports acknowledged (sent again, they would meet the same bug).
"""

from __future__ import annotations

import logging
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
    _aside: deque[Released]  # set aside after a store error, planned again by `_aside_loop`
    _aside_wake: anyio.Event
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
            if not self._released:
                await self._intake_wake.wait()
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

    async def _intake(self) -> None:
        """Plan and queue the released changes; one leaves `_released` once it is queued, or
        set aside after a store error. The directory listings they alter are refreshed after
        them, each once.

        Raises:
            anything but StoreError: planning the change now at the head failed (a bug); the
                changes planned before it are queued.
        """
        items: list[PurgeItem] = []
        listings = ListingRefreshes()
        planned: list[Released] = []
        aside: list[Released] = []
        self._unplannable = None
        failure: Exception | None = None
        for change in list(self._released):
            site = self._sites.get(change.site_id)
            try:
                if site is not None:
                    items += await self._plan(site, change)
                    listings.add(site, change)
            except StoreError as exc:
                logger.warning(
                    "purge planning of %s %r could not read the store, planned again apart"
                    " (the changes behind it go on): %s",
                    change.op,
                    change.path,
                    exc,
                )
                aside.append(change)
                continue
            except Exception as exc:  # noqa: BLE001 - queue what was planned, then re-raise
                failure = exc
                self._unplannable = change
                break
            planned.append(change)
        if aside:  # out before the await: a barrier taken meanwhile finds them there
            self._take_out(aside, mark=False)
            self._aside.extend(aside)
            self._aside_wake.set()
        await self._queue_planned(items, listings)
        self._take_out(planned)
        if failure is not None:
            raise failure

    async def _aside_loop(self) -> None:
        """Plan the changes set aside, the oldest first, each once the store answers for it."""
        failures = 0  # store errors (or bugs) in a row
        while True:
            if not self._aside:
                await self._aside_wake.wait()
                self._aside_wake = anyio.Event()
                continue
            change = self._aside[0]
            try:
                await self._plan_aside(change)
            except StoreError as exc:
                failures += 1
                logger.warning(
                    "purge planning of %s %r (and %s more set aside) could not read the store"
                    " (attempt %d), will retry in %.1f s: %s",
                    change.op,
                    change.path,
                    len(self._aside) - 1,
                    failures,
                    self._backoff_s(failures),
                    exc,
                )
            except Exception as exc:
                failures += 1
                self._failing("planning a change set aside", exc, failures)
                self._aside.rotate(-1)  # behind the others; its reports go (see the module doc)
                change.waiters.mark_queued()
            else:
                failures = 0
                continue
            await anyio.sleep(self._backoff_s(failures))

    async def _plan_aside(self, change: Released) -> None:
        """Plan and queue one change set aside; it leaves `_aside` once queued."""
        items: list[PurgeItem] = []
        listings = ListingRefreshes()
        site = self._sites.get(change.site_id)
        if site is not None:
            items += await self._plan(site, change)
            listings.add(site, change)
        await self._queue_planned(items, listings)
        if self._aside and self._aside[0] is change:  # (only this task takes from the front)
            self._aside.popleft()
        change.waiters.mark_queued()

    async def _queue_planned(self, items: list[PurgeItem], listings: ListingRefreshes) -> None:
        """Queue `items` and then the refreshes of the `listings` they alter: one ban per URL,
        no variant under a prefix."""
        await self._enqueue(prune_bans(items + _listing_items(items, listings)))

    def _to_back(self, change: Released) -> None:
        """`change` failed planning (a bug): it stays in the intake, behind the others; its
        reports are acknowledged (sent again, they would meet the same bug), as they were
        before holds."""
        if not any(c is change for c in self._released):
            return
        self._take_out([change], mark=False)
        self._released.append(change)
        change.waiters.mark_queued()

    def _take_out(self, changes: list[Released], *, mark: bool = True) -> None:
        """`changes` leave the intake (by identity: equal changes may differ); queued (`mark`),
        their reports' holds are told."""
        if not changes:
            return
        gone = {id(change) for change in changes}
        kept = [change for change in self._released if id(change) not in gone]
        self._released.clear()
        self._released.extend(kept)
        for change in changes if mark else ():
            change.waiters.mark_queued()
