"""Rechecks: another look at a URL on nginx some time after its refresh (or purge) was confirmed.

A cache fetch that read the origin before a change and ends after the URL's confirmed refresh
stores the old copy over the new one: nginx keeps whichever fetch ends last. Measured with
Debian's nginx (proxy_cache, cache-purge module): a user's GET of a listing that read the
directory before a new file and answered 2 s later left nginx serving the old listing for its
TTL (1 h), after a refresh the purge log showed confirmed. Varnish and Squid kept the new copy in
the same test, so only the caches whose driver says `late_fills_win` are looked at again.

Each confirmed refresh or purge on such a cache is looked at again RECHECK_AFTER_S after its
confirm (each round after the one before): the cache's answer under each Accept-Encoding the
confirm looked at, against what the confirm found it serving (`Served`):
- the same: the next round, if any;
- another copy: an origin is asked. If it still serves what was confirmed, the cache went back
  to an older copy: the item is queued again (a "stale" row in the purge log, a warning), and
  its confirm starts the rounds afresh. If the origin serves something else too, a newer change
  is on its way: its own item refreshes the URL once every origin has committed it (a recheck
  never refreshes what was not confirmed), and this URL's rounds end.

Bounds: one recheck waits per (site, cache, URL) (a newer confirm replaces it, and an item
queued or running for the URL ends it: it confirms again); at most MAX_RECHECKS wait (past that
the oldest is dropped, counted, logged); a body longer than RECHECK_BODY_MAX is compared by its
headers (status, length, ETag, Last-Modified) only, never read whole; a cache that goes back to
an older copy MAX_REGRESSIONS times for the same confirmed copy is refreshed that last time but
not looked at again for it (an error is logged: something else than a late fetch writes it).
Rechecks take a slot of the cache's gate, under the overall concurrency, after the queue's items,
and never change its breaker: a cache whose gate is open (down, refusing) is not looked at. A
fetch that began before the change and lasts longer than the last round (a big file to a slow
client) is not caught; a look that fails (timeout, connection) goes on to the next round.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Literal

import anyio
import httpx
from anyio.abc import TaskGroup

from relaysync.errors import PurgeError
from relaysync.purge.budget import ITEM_TIMEOUT_S, MIN_BYTES_PER_S, budgeted
from relaysync.purge.confirm import Head, Served, open_origin
from relaysync.purge.drivers import Driver
from relaysync.purge.drivers._base import read_body_upto
from relaysync.purge.gates import Gate
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.site import CacheSpec, SiteSpec
from relaysync.purge.urls import Url, parse_url

logger = logging.getLogger("relaysync.purge.purger")  # the purger's story, one logger name

RECHECK_AFTER_S = (2.0, 15.0)  # looks after a confirm, each after the one before
MAX_RECHECKS = 20_000  # waiting at once (one per cache and URL); the oldest dropped past it
RECHECK_BODY_MAX = 1024 * 1024  # longer bodies are compared by their headers only
MAX_REGRESSIONS = 3  # goings back to an older copy of one confirmed copy before it is left

UrlKey = tuple[int, str, str]  # (site id, cache name, url)


@dataclass(frozen=True, slots=True)
class Recheck:
    """The next look at one URL on one cache."""

    item: PurgeItem  # the item whose confirm it checks (queued again if the cache went back)
    served: tuple[Served, ...]  # what that confirm found the cache serving
    at: float  # unix time it is due
    round: int  # its index in the schedule
    since: float  # unix time of the confirm


@dataclass(frozen=True, slots=True)
class Look:
    """What a recheck found: the cache serves what was confirmed ("current"), the origin moved
    on ("moved": a newer change), or the cache went back to another copy ("back")."""

    outcome: Literal["current", "moved", "back"]
    detail: str = ""


def key_of(item: PurgeItem) -> UrlKey:
    return (item.site_id, item.cache, item.url)


class Rechecks:
    """The rechecks waiting, by (site, cache, URL), in a heap by due time (an entry replaced
    by a newer one stays in the heap until popped, then is skipped)."""

    def __init__(self, schedule: Sequence[float] = RECHECK_AFTER_S, limit: int = MAX_RECHECKS):
        if any(s < 0 for s in schedule) or limit < 1:
            raise ValueError(f"recheck delays must be >= 0, limit >= 1: {list(schedule)}, {limit}")
        self.schedule = tuple(schedule)
        self.limit = limit
        self._waiting: dict[UrlKey, Recheck] = {}
        self._heap: list[tuple[float, int, Recheck]] = []
        self._pushed = itertools.count()
        # per URL: the confirmed copy the cache went back from, and how many times in a row
        self._regressions: dict[UrlKey, tuple[tuple[Served, ...], int]] = {}
        self.dropped = 0  # rechecks dropped at the limit
        self.stale = 0  # rechecks that found the cache gone back to an older copy
        self.moved = 0  # rechecks that found the origin moved on (a newer change)

    def __len__(self) -> int:
        return len(self._waiting)

    def confirmed(self, item: PurgeItem, served: Sequence[Served], now: float) -> None:
        """`item` was done and its confirm found the cache serving `served` at `now`: its
        first look (none without a schedule or a look, or for a copy the cache went back
        from MAX_REGRESSIONS times)."""
        key = key_of(item)
        self._waiting.pop(key, None)  # a newer confirm ends the older one's rounds
        looks = tuple(served)
        if not (self.schedule and looks):
            return
        went_back = self._regressions.get(key)
        if went_back is not None and went_back[0] != looks:
            del self._regressions[key]
        elif went_back is not None and went_back[1] >= MAX_REGRESSIONS:
            return
        self._add(Recheck(item, looks, now + self.schedule[0], 0, now))

    def passed(self, recheck: Recheck, now: float) -> None:
        """`recheck` found the cache serving what was confirmed (or could not tell) at `now`:
        the next round, if there is one and no newer confirm took its place meanwhile."""
        key = key_of(recheck.item)
        n = recheck.round + 1
        if key in self._waiting:
            return
        if n < len(self.schedule):
            self._add(
                Recheck(recheck.item, recheck.served, now + self.schedule[n], n, recheck.since)
            )
        else:
            self._regressions.pop(key, None)  # it held: a later going back counts from one

    def went_back(self, recheck: Recheck) -> int:
        """The cache went back from `recheck`'s confirmed copy: how many times in a row now."""
        key = key_of(recheck.item)
        self.stale += 1
        before = self._regressions.pop(key, None)
        count = before[1] + 1 if before is not None and before[0] == recheck.served else 1
        self._regressions[key] = (recheck.served, count)
        if len(self._regressions) > self.limit:
            del self._regressions[next(iter(self._regressions))]  # the oldest
        return count

    def _add(self, recheck: Recheck) -> None:
        key = key_of(recheck.item)
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
        return self._waiting.get(key_of(recheck.item)) is recheck

    def pop_due(self, now: float) -> tuple[list[Recheck], float]:
        """Take the rechecks due at `now`, earliest first; each must be `started` or `ended`,
        or given back (`put_back`). Also return when the earliest of the others falls due
        (inf: none)."""
        out: list[Recheck] = []
        while self._heap and self._heap[0][0] <= now:
            recheck = heapq.heappop(self._heap)[2]
            if self._current(recheck):
                out.append(recheck)
        while self._heap and not self._current(self._heap[0][2]):
            heapq.heappop(self._heap)
        return out, self._heap[0][0] if self._heap else math.inf

    def started(self, recheck: Recheck) -> None:
        """`recheck`, taken by pop_due, runs (or is not needed): it no longer waits."""
        if self._current(recheck):
            del self._waiting[key_of(recheck.item)]

    def put_back(self, rechecks: Sequence[Recheck]) -> None:
        """Rechecks taken by pop_due that could not start yet: due again at the next pass."""
        for recheck in rechecks:
            if self._current(recheck):
                self._push(recheck)


async def look_again(
    driver: Driver,
    client: httpx.AsyncClient,
    origins: Sequence[str],
    url: Url,
    served: Sequence[Served],
) -> Look:
    """Compare what the cache serves now with what its confirm found (`served`, each
    encoding), and, where it differs, what an origin serves (see the module docstring).

    Raises:
        PurgeError: the cache could not be reached; httpx.HTTPError: a body could not be read.
    """
    for seen in served:
        async with driver.stream("GET", url, encoding=seen.encoding) as cached:
            now = await _differs(cached, seen)
        if not now:
            continue
        async with AsyncExitStack() as stack:
            origin = await open_origin(stack, client, origins, url, seen.encoding)
            if origin is None:  # no origin answers: nothing to tell a late fetch by
                return Look("moved", "no origin answered")
            moved = await _differs(origin, seen)
        where = f"{url} (Accept-Encoding: {seen.encoding!r})"
        if moved:
            return Look("moved", f"{where}: the origin serves {moved}")
        return Look(
            "back", f"{where}: serves {now}, confirmed HTTP {seen.status} {seen.digest[:12]}"
        )
    return Look("current")


async def _differs(response: httpx.Response, seen: Served) -> str:
    """How `response` differs from what was seen ("" if it is the same, as far as a body of
    RECHECK_BODY_MAX bytes or less, or else the headers, tell)."""
    head = Head.of(response)
    why = head.differs(seen.head)
    if why or head.status != 200:
        return why
    if seen.head.length is not None and seen.head.length > RECHECK_BODY_MAX:
        return ""
    digest = await read_body_upto(response, RECHECK_BODY_MAX)
    return "" if digest in (None, seen.digest) else f"HTTP 200 {digest[:12]}"


class RecheckWorker:
    """The rechecks' part of the purge workers (mixed into PurgeWorker, whose state and helpers
    it uses)."""

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

    def _dispatch_rechecks(self, tg: TaskGroup, now: float, pending: set[UrlKey]) -> float:
        """Start the rechecks due, each as its cache's gate admits and the overall concurrency
        allows; return when the next one falls due. One whose URL has an item queued or running
        is not needed (that item confirms again); one held back by a full gate or the
        concurrency waits for a try to end, which wakes the loop."""
        due, later = self.rechecks.pop_due(now)
        held: list[Recheck] = []
        for recheck in due:
            item = recheck.item
            key = key_of(item)
            gate = self._gate(self._gate_key(item.site_id, item.cache))
            if key in pending or key in self._busy or gate.open:
                self.rechecks.started(recheck)  # (an open gate: the cache cannot be looked at)
                continue
            if self._in_flight >= self._concurrency or not gate.admit(now):
                held.append(recheck)
                continue
            self.rechecks.started(recheck)
            self._busy.add(key)
            self._in_flight += 1
            tg.start_soon(self._run_recheck, key, recheck, gate)
        self.rechecks.put_back(held)
        return later

    async def _run_recheck(self, key: UrlKey, recheck: Recheck, gate: Gate) -> None:
        try:
            await self._recheck(recheck)
        except Exception as exc:
            self._failing(f"rechecking {recheck.item.url} on {recheck.item.cache}", exc, 1)
        finally:
            gate.release()
            self._in_flight -= 1
            self._busy.discard(key)
            self._work_wake.set()

    async def _recheck(self, recheck: Recheck) -> None:
        item = recheck.item
        site = self._sites.get(item.site_id)
        cache = next((c for c in site.caches if c.name == item.cache), None) if site else None
        if site is None or cache is None or self._client is None:
            return  # the site or cache was removed meanwhile
        started = time.perf_counter()
        try:
            with budgeted(ITEM_TIMEOUT_S, MIN_BYTES_PER_S):
                look = await look_again(
                    self._driver(site, cache),
                    self._client,
                    self._origin_urls(site),
                    parse_url(item.url),
                    recheck.served,
                )
        except (PurgeError, TimeoutError, httpx.HTTPError) as exc:
            logger.info("recheck of %s on %s: %s; looked at again later", item.url, item.cache, exc)
            self.rechecks.passed(recheck, time.time())
            return
        if look.outcome == "current":
            self.rechecks.passed(recheck, time.time())
            return
        if look.outcome == "moved":
            self.rechecks.moved += 1
            logger.debug(
                "recheck of %s on %s: a newer change: %s", item.url, item.cache, look.detail
            )
            return
        await self._went_back(recheck, look, started)

    async def _went_back(self, recheck: Recheck, look: Look, started: float) -> None:
        """The cache serves an older copy than it was confirmed serving: queue the item again."""
        item = recheck.item
        times = self.rechecks.went_back(recheck)
        after_s = time.time() - recheck.since
        message = (
            "cache %s went back to another copy of %s %.1f s after its %s was confirmed (a fetch "
            "that began before the change ended after it): %s again: %s"
        )
        args = (item.cache, item.url, after_s, item.action, item.action, look.detail)
        if times >= MAX_REGRESSIONS:
            logger.error(
                message + " (%d times in a row: not looked at again for this copy; does "
                "something else write the cache?)",
                *args,
                times,
            )
        else:
            logger.warning(message, *args)
        detail = f"recheck {after_s:.1f} s after the confirm: {look.detail}; queued again"
        self._record(item, 1, started, "stale", False, detail)
        await self._enqueue([item])
