"""Rechecks: another look at a URL some time after its refresh (or purge) was confirmed.

A cache fetch that read the origin before a change, and ends after the URL's refresh, stores the
old copy over the new one: nginx keeps whichever fetch ends last. Measured with Debian's nginx
(proxy_cache, cache-purge module): a user's GET of a listing that read the directory before a
new file and answered 2 s later left nginx serving the old listing for its TTL, after a refresh
confirmed at once. The confirm cannot see it: the old copy lands after it.

So each confirmed refresh or purge is looked at again `RECHECK_AFTER_S` after it: the cache and
an origin compared as the confirm does (purge/confirm.py), each round after the one before. A
cache that then serves something else than the origin gets the item again (queued, so retried
and logged like any other), and its own confirm starts the rounds afresh. A fetch that began
before the change and lasts longer than the last round (a big file to a slow client) is not
caught.

One recheck per (site, cache, URL): a later refresh of the URL replaces the one waiting. At most
`limit` wait (memory); past that the oldest is dropped and counted. `Rechecks` is the schedule;
`RecheckWorker`, mixed into the purge workers (purge/worker.py), runs them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass

import anyio
import httpx
from anyio.abc import TaskGroup

from relaysync.errors import CacheUnreachable, PurgeError, StaleCopy
from relaysync.purge.budget import ITEM_TIMEOUT_S, MIN_BYTES_PER_S, budgeted
from relaysync.purge.confirm import confirm
from relaysync.purge.drivers import Driver
from relaysync.purge.gates import Gate
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.site import CacheSpec, SiteSpec
from relaysync.purge.urls import parse_url

logger = logging.getLogger("relaysync.purge.purger")  # the purger's story, one logger name

RECHECK_AFTER_S = (2.0, 15.0)  # looks after a confirmed refresh, each after the one before
MAX_RECHECKS = 100_000  # waiting at once (one per cache and URL); the oldest dropped past it

UrlKey = tuple[int, str, str]  # (site id, cache name, url)


@dataclass(frozen=True, slots=True)
class Recheck:
    """The next look at one URL on one cache."""

    item: PurgeItem  # the item whose confirm it checks (queued again if the copy is stale)
    at: float  # unix time it is due
    round: int  # its index in the schedule
    since: float  # unix time of the confirm it checks


class Rechecks:
    """The rechecks waiting, by (site, cache, URL), in a heap by due time (an entry replaced
    by a newer one stays in the heap until popped, then is skipped)."""

    def __init__(self, schedule: Sequence[float] = RECHECK_AFTER_S, limit: int = MAX_RECHECKS):
        if any(s < 0 for s in schedule):
            raise ValueError(f"recheck delays must be >= 0, got {list(schedule)}")
        self.schedule = tuple(schedule)
        self.limit = limit
        self._waiting: dict[UrlKey, Recheck] = {}
        self._heap: list[tuple[float, int, Recheck]] = []
        self._pushed = itertools.count()
        self.dropped = 0  # rechecks dropped at the limit
        self.stale = 0  # rechecks that found a stale copy

    def __len__(self) -> int:
        return len(self._waiting)

    def confirmed(self, item: PurgeItem, now: float) -> None:
        """`item` was done and confirmed at `now`: its first look (none without a schedule)."""
        if self.schedule:
            self._add(Recheck(item, now + self.schedule[0], 0, now))

    def passed(self, recheck: Recheck, now: float) -> None:
        """`recheck` found the copy current at `now`: the next round, if there is one."""
        n = recheck.round + 1
        if n < len(self.schedule):
            self._add(Recheck(recheck.item, now + self.schedule[n], n, recheck.since))

    def _add(self, recheck: Recheck) -> None:
        key = _key(recheck.item)
        self._waiting.pop(key, None)  # a newer confirm replaces the older one's rounds
        if len(self._waiting) >= self.limit:
            del self._waiting[next(iter(self._waiting))]  # the oldest added
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                logger.warning(
                    "%d purge rechecks dropped: more than %d wait at once (the oldest go first)",
                    self.dropped,
                    self.limit,
                )
        self._waiting[key] = recheck
        self._push(recheck)
        if len(self._heap) > 2 * len(self._waiting) + 1024:  # replaced entries: compact
            self._heap = [e for e in self._heap if self._current(e[2])]
            heapq.heapify(self._heap)

    def _push(self, recheck: Recheck) -> None:
        heapq.heappush(self._heap, (recheck.at, next(self._pushed), recheck))

    def _current(self, recheck: Recheck) -> bool:
        return self._waiting.get(_key(recheck.item)) is recheck

    def pop_due(self, now: float, skip: Container[UrlKey]) -> tuple[list[Recheck], float | None]:
        """Take the rechecks due at `now`, earliest first, but those of the URLs in `skip`
        (they stay); each taken one must be started or given back (`put_back`). Also return
        when the earliest of those not yet due falls due (None: none)."""
        out: list[Recheck] = []
        kept: list[Recheck] = []
        while self._heap and self._heap[0][0] <= now:
            recheck = heapq.heappop(self._heap)[2]
            if self._current(recheck):
                (kept if _key(recheck.item) in skip else out).append(recheck)
        while self._heap and not self._current(self._heap[0][2]):
            heapq.heappop(self._heap)
        later = self._heap[0][0] if self._heap else None
        for recheck in kept:
            self._push(recheck)
        return out, later

    def started(self, recheck: Recheck) -> None:
        """`recheck`, taken by pop_due, runs: it no longer waits."""
        if self._current(recheck):
            del self._waiting[_key(recheck.item)]

    def put_back(self, rechecks: Iterable[Recheck]) -> None:
        """Rechecks taken by pop_due that could not start yet: due again at once."""
        for recheck in rechecks:
            if self._current(recheck):
                self._push(recheck)


def _key(item: PurgeItem) -> UrlKey:
    return (item.site_id, item.cache, item.url)


class RecheckWorker:
    """The rechecks' part of the purge workers (mixed into PurgeWorker, whose state and
    helpers it uses): they run through the caches' gates, under the overall concurrency, after
    the queue's items."""

    rechecks: Rechecks
    _sites: dict[int, SiteSpec]
    _busy: set[UrlKey]
    _in_flight: int
    _concurrency: int
    _work_wake: anyio.Event
    _client: httpx.AsyncClient | None
    _gate: Callable[[str], Gate]
    _gate_key: Callable[[int, str], str]
    _driver: Callable[[SiteSpec, CacheSpec], Driver]
    _origin_urls: Callable[[SiteSpec], list[str]]
    _record: Callable[[PurgeItem, int, float, str, bool | None, str], None]
    _failing: Callable[[str, Exception, int], None]

    async def _enqueue(self, items: list[PurgeItem]) -> None:
        raise NotImplementedError  # the Purger's: a durable queue write

    def _dispatch_rechecks(self, tg: TaskGroup, now: float, skip: set[UrlKey]) -> float | None:
        """Start the rechecks due, after the queue's items, each as its cache's gate admits and
        the overall concurrency allows (a URL with an item queued or in flight is left to that
        item); return when the next one falls due, or a gate opens for a probe. One held back
        by a full gate or the concurrency waits for a try to end, which wakes the loop."""
        held: list[Recheck] = []
        due, later = self.rechecks.pop_due(now, skip)
        for recheck in due:
            item = recheck.item
            gate = self._gate(self._gate_key(item.site_id, item.cache))
            if self._in_flight >= self._concurrency or not gate.admit(now):
                held.append(recheck)
                if gate.open and gate.probe_at > now:
                    later = min(later or gate.probe_at, gate.probe_at)
                continue
            self.rechecks.started(recheck)
            url_key = (item.site_id, item.cache, item.url)
            self._busy.add(url_key)
            self._in_flight += 1
            tg.start_soon(self._run_recheck, url_key, recheck, gate)
        self.rechecks.put_back(held)
        return later

    async def _run_recheck(self, key: UrlKey, recheck: Recheck, gate: Gate) -> None:
        try:
            await self._recheck(recheck, gate)
        except Exception as exc:
            self._failing(f"rechecking {recheck.item.url} on {recheck.item.cache}", exc, 1)
        finally:
            gate.release()
            self._in_flight -= 1
            self._busy.discard(key)
            self._work_wake.set()

    async def _recheck(self, recheck: Recheck, gate: Gate) -> None:
        """Look at the URL again; a stale copy (or no answer) gets its item queued again."""
        item = recheck.item
        site = self._sites.get(item.site_id)
        cache = next((c for c in site.caches if c.name == item.cache), None) if site else None
        if site is None or cache is None or self._client is None:
            return  # the site or cache was removed meanwhile
        started = time.perf_counter()
        try:
            with budgeted(ITEM_TIMEOUT_S, MIN_BYTES_PER_S):
                await confirm(
                    self._driver(site, cache),
                    self._client,
                    self._origin_urls(site),
                    parse_url(item.url),
                    every=item.action == "purge",  # as its confirm: each variant
                )
        except StaleCopy as exc:
            gate.succeeded()
            self.rechecks.stale += 1
            after_s = time.time() - recheck.since
            logger.warning(
                "cache %s served another copy of %s %.1f s after its %s was confirmed (a fetch "
                "that began before the change ended after it): %s again: %s",
                item.cache,
                item.url,
                after_s,
                item.action,
                item.action,
                exc,
            )
            detail = f"recheck {after_s:.1f} s after the confirm: {exc}; queued again"
            self._record(item, 1, started, "stale", False, detail)
            await self._enqueue([item])
            return
        except CacheUnreachable as exc:  # the queued item waits for the cache's gate
            gate.unreachable(time.time())
            logger.info("recheck of %s on %s: %s; queued again", item.url, item.cache, exc)
            await self._enqueue([item])
            return
        except (PurgeError, TimeoutError) as exc:
            gate.succeeded()
            logger.info("recheck of %s on %s failed: %s; queued again", item.url, item.cache, exc)
            await self._enqueue([item])
            return
        gate.succeeded()
        self.rechecks.passed(recheck, time.time())
