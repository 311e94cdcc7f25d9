"""Rechecks: another look at a URL on nginx some time after its refresh (or purge) was confirmed.

A cache fetch that read the origin before a change and ends after the URL's confirmed refresh
stores the old copy over the new one: nginx keeps whichever fetch ends last. Measured with
Debian's nginx (proxy_cache, cache-purge module): a user's GET of a listing that read the
directory before a new file and answered 2 s later left nginx serving the old listing for its
TTL (1 h), after a refresh the purge log showed confirmed. Varnish and Squid kept the new copy in
the same test, so only the caches whose driver says `late_fills_win` are looked at again.

Each confirmed refresh or purge on such a cache is looked at again RECHECK_AFTER_S after its
confirm, each look that long after the one before (2 s, then 15 s more): the cache's answer under
each Accept-Encoding the confirm looked at, against what the confirm found it serving (`Served`):
- the same: the next round, if any;
- another copy: every origin that is up is asked (status and body; its ETag and Last-Modified
  may be its own). If each answers, and each still serves what was confirmed, the cache went
  back to an older copy: the item is queued again (then a "stale" row in the purge log, a
  warning), and its confirm starts the rounds afresh. If any origin serves something else, a
  newer change is on its way (committed on some origins, perhaps not all): its own item
  refreshes the URL once every origin has it, and this URL's rounds end. A recheck never
  refreshes what was not confirmed.
- what cannot be told: the next round. A 5xx or 429 from the cache or an origin, an origin not
  answering, a timeout, a body too long to compare; and, before anything is asked, a change of
  the site that some origin has committed and not every one yet (the purger's CommitTracker:
  any origin could then serve it, one without a URL to ask included).

Bounds: one recheck waits per (site, cache, URL) (a newer confirm replaces it, and an item
queued or running for the URL ends it: it confirms again); at most MAX_RECHECKS wait (past that
the oldest is dropped, counted, logged; about 2.7 KB each with nginx's seven encodings); bodies
are read up to RECHECK_BODY_MAX bytes (past that only the headers are compared: status, length,
ETag, Last-Modified; such a body counts as the same on the cache, as unknown on an origin); a
cache that goes back from the same confirmed content MAX_REGRESSIONS times is refreshed that
last time but not looked at again for it (an error is logged: something else than a late fetch
writes it). Rechecks take a slot of the cache's gate only while it is below half full, and at
most half the overall concurrency, after the queue's items, RECHECKS_PER_PASS at most a pass
(one that cannot start is due again HELD_AGAIN_S later, behind the others);
they never change a gate's breaker, and those of a cache whose gate is open (down, refusing)
end. They live in memory: a master restart forgets them. A fetch that began before the change
and lasts longer than the last round (a big file to a slow client) is not caught.
"""

from __future__ import annotations

import dataclasses
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
from relaysync.purge.due import UrlKey
from relaysync.purge.gates import Gate
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.ordering import CommitTracker
from relaysync.purge.site import CacheSpec, SiteSpec
from relaysync.purge.urls import Url, parse_url

logger = logging.getLogger("relaysync.purge.purger")  # the purger's story, one logger name

RECHECK_AFTER_S = (2.0, 15.0)  # looks after a confirm, each after the one before
MAX_RECHECKS = 20_000  # waiting at once (one per cache and URL); the oldest dropped past it
RECHECK_BODY_MAX = 1024 * 1024  # longer bodies are compared by their headers only
MAX_REGRESSIONS = 3  # goings back from one confirmed content before it is left
RECHECKS_PER_PASS = 256  # due rechecks taken from the heap in one pass of the work loop
HELD_AGAIN_S = 0.5  # a recheck that could not start is due again this much later


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
    """What a recheck found: the cache serves what was confirmed ("current"), an origin moved
    on ("moved": a newer change), the cache went back to another copy ("back"), or it could
    not tell ("unknown")."""

    outcome: Literal["current", "moved", "back", "unknown"]
    detail: str = ""


Content = tuple[tuple[str, int, str], ...]  # (encoding, status, digest) of each look


def key_of(item: PurgeItem) -> UrlKey:
    return (item.site_id, item.cache, item.url)


def content_of(served: Sequence[Served]) -> Content:
    """What a confirm found, without the headers (an origin may send a new ETag each time)."""
    return tuple((s.encoding, s.status, s.digest) for s in served)


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
        # per URL: the confirmed content the cache went back from, and how many times
        self._regressions: dict[UrlKey, tuple[Content, int]] = {}
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
        if went_back is not None and went_back[0] != content_of(looks):
            del self._regressions[key]
        elif went_back is not None and went_back[1] >= MAX_REGRESSIONS:
            return
        self._add(Recheck(item, looks, now + self.schedule[0], 0, now))

    def passed(self, recheck: Recheck, now: float, *, held: bool = True) -> None:
        """`recheck` found the cache serving what was confirmed (`held`), or could not tell,
        at `now`: the next round, if there is one and no newer confirm took its place."""
        key = key_of(recheck.item)
        n = recheck.round + 1
        if key in self._waiting:
            return
        if n < len(self.schedule):
            self._add(
                Recheck(recheck.item, recheck.served, now + self.schedule[n], n, recheck.since)
            )
        elif held:
            self._regressions.pop(key, None)  # it held: a later going back counts from one

    def went_back(self, recheck: Recheck) -> int:
        """The cache went back from `recheck`'s confirmed copy: how many times in a row now."""
        key = key_of(recheck.item)
        self.stale += 1
        content = content_of(recheck.served)
        before = self._regressions.pop(key, None)
        count = before[1] + 1 if before is not None and before[0] == content else 1
        self._regressions[key] = (content, count)
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

    def pop_due(self, now: float, limit: int = RECHECKS_PER_PASS) -> tuple[list[Recheck], float]:
        """Take (at most `limit` of) the rechecks due at `now`, earliest first; each must be
        `started` or given back (`put_back`). Also return when the earliest of the others
        falls due (inf: none)."""
        out: list[Recheck] = []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
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

    def put_back(self, rechecks: Sequence[Recheck], at: float) -> None:
        """Rechecks taken by pop_due that could not start yet: due again at `at` (behind the
        others due now: a cache whose gate is full does not hold back the rechecks of others)."""
        for recheck in rechecks:
            if self._current(recheck):
                again = dataclasses.replace(recheck, at=at)
                self._waiting[key_of(recheck.item)] = again
                self._push(again)

    def next_due(self) -> float:
        """When the earliest recheck waiting falls due (inf: none)."""
        while self._heap and not self._current(self._heap[0][2]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else math.inf


async def look_again(
    driver: Driver,
    client: httpx.AsyncClient,
    origins: Sequence[str],
    url: Url,
    served: Sequence[Served],
) -> Look:
    """Compare what the cache serves now with what its confirm found (`served`, each
    encoding), and, where it differs, what every origin in `origins` serves (see the module
    docstring).

    Raises:
        PurgeError: the cache could not be reached; httpx.HTTPError: a body could not be read.
    """
    for seen in served:
        where = f"{url} (Accept-Encoding: {seen.encoding!r})"
        async with driver.stream("GET", url, encoding=seen.encoding) as cached:
            if _no_copy(cached.status_code):  # a gateway error, a rate limit: not a copy
                return Look("unknown", f"{where}: the cache answered HTTP {cached.status_code}")
            now = await _differs(cached, seen, heads=True)
        if not now:  # the same ("", or None: too long to compare, and the headers agree)
            continue
        for base in origins:
            async with AsyncExitStack() as stack:
                origin = await open_origin(stack, client, [base], url, seen.encoding)
                if origin is None or _no_copy(origin.status_code):
                    return Look("unknown", f"{where}: origin {base} gave no answer to compare")
                moved = await _differs(origin, seen, heads=False)
            if moved is None:
                return Look("unknown", f"{where}: origin {base}'s answer is too long to compare")
            if moved:
                return Look("moved", f"{where}: origin {base} serves {moved}")
        if not origins:
            return Look("unknown", f"{where}: no origin to ask")
        return Look(
            "back", f"{where}: serves {now}, confirmed HTTP {seen.status} {seen.digest[:12]}"
        )
    return Look("current")


def _no_copy(status: int) -> bool:
    """An answer that says nothing of the copy held or served (a gateway error, a rate limit)."""
    return status >= 500 or status == 429


async def _differs(response: httpx.Response, seen: Served, *, heads: bool) -> str | None:
    """How `response` differs from what was seen: "" the same, None not told (a body longer
    than RECHECK_BODY_MAX whose headers agree). `heads`: compare ETag and Last-Modified too
    (the cache's, whose headers the confirm saw; an origin's may be its own for the same bytes)."""
    head = Head.of(response)
    why = head.differs(seen.head if heads else Head(seen.head.status, seen.head.length, "", ""))
    if why or head.status != 200:
        return why
    if seen.head.length is not None and seen.head.length > RECHECK_BODY_MAX:
        return None
    digest = await read_body_upto(response, RECHECK_BODY_MAX)
    if digest is None:
        return None
    return "" if digest == seen.digest else f"HTTP 200 {digest[:12]}"


class RecheckWorker:
    """The rechecks' part of the purge workers (mixed into PurgeWorker, whose state and helpers
    it uses)."""

    rechecks: Rechecks
    tracker: CommitTracker
    _sites: dict[int, SiteSpec]
    _states: dict[str, str]
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

    async def _enqueue(self, items: list[PurgeItem]) -> None:
        raise NotImplementedError  # the Purger's: a durable queue write

    def _dispatch_rechecks(self, tg: TaskGroup, now: float, pending: set[UrlKey]) -> float:
        """Start the rechecks due, each while its cache's gate is below half full and the
        rechecks' share of the overall concurrency allows; return when the next one falls due.
        One whose URL has an item queued or running is not needed (that item confirms again);
        one held back is due again HELD_AGAIN_S later, behind the others due now."""
        share = max(1, self._concurrency // 2)
        if self._in_flight >= share:
            return math.inf  # (a try's end wakes the loop)
        due, _ = self.rechecks.pop_due(now)
        held: list[Recheck] = []
        for recheck in due:
            item = recheck.item
            key = key_of(item)
            gate = self._gate(self._gate_key(item.site_id, item.cache))
            if key in pending or key in self._busy or gate.open:
                self.rechecks.started(recheck)  # (an open gate: the cache cannot be looked at)
                continue
            if (
                self._in_flight >= share
                or gate.in_flight >= max(1, gate.limit // 2)
                or not gate.admit(now)
            ):
                held.append(recheck)
                continue
            self.rechecks.started(recheck)
            self._busy.add(key)
            self._in_flight += 1
            tg.start_soon(self._run_recheck, key, recheck, gate)
        self.rechecks.put_back(held, now + HELD_AGAIN_S)
        return self.rechecks.next_due()

    async def _run_recheck(self, key: UrlKey, recheck: Recheck, gate: Gate) -> None:
        look = Look("unknown")
        started = time.perf_counter()
        try:
            look = await self._recheck(recheck)
        except Exception:  # a bug: this look is lost, not the loop nor the next round
            logger.exception("purger: unexpected error rechecking %s", recheck.item.url)
            self.rechecks.passed(recheck, time.time(), held=False)
        finally:
            gate.release()
            self._in_flight -= 1
            self._busy.discard(key)
            self._work_wake.set()
        if look.outcome != "back":
            return
        try:  # with the slots free: the store may be slow or away
            await self._went_back(recheck, look, started)
        except Exception:
            logger.exception("purger: could not queue %s again after its recheck", recheck.item.url)

    async def _recheck(self, recheck: Recheck) -> Look:
        item = recheck.item
        site = self._sites.get(item.site_id)
        cache = next((c for c in site.caches if c.name == item.cache), None) if site else None
        if site is None or cache is None or self._client is None:
            return Look("moved", "the site or cache was removed")
        look = self._not_now(site)
        if look is None:
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
                look = Look("unknown", f"{type(exc).__name__}: {exc}")
        if look.outcome in ("current", "unknown"):
            if look.detail:
                logger.info("recheck of %s on %s: %s", item.url, item.cache, look.detail)
            self.rechecks.passed(recheck, time.time(), held=look.outcome == "current")
        elif look.outcome == "moved":
            self.rechecks.moved += 1
            logger.debug("recheck of %s on %s: moved on: %s", item.url, item.cache, look.detail)
        return look

    def _not_now(self, site: SiteSpec) -> Look | None:
        """Why the origins cannot tell now whether the cache went back: a change of the site
        some origin has committed and not every one yet (any could serve it; origins without
        a URL, which are not asked, included: every fleet origin's commits are tracked)."""
        if self.tracker.has_pending(site.id):
            return Look("unknown", "a change of the site is not on every origin yet")
        return None

    async def _went_back(self, recheck: Recheck, look: Look, started: float) -> None:
        """The cache serves an older copy than it was confirmed serving: queue the item again
        (then say so: a "stale" row in the purge log)."""
        item = recheck.item
        await self._enqueue([item])
        times = self.rechecks.went_back(recheck)
        after_s = time.time() - recheck.since
        message = (
            "cache %s went back to another copy of %s %.1f s after its %s was confirmed (a fetch "
            "that began before the change ended after it): %s again: %s"
        )
        args = (item.cache, item.url, after_s, item.action, item.action, look.detail)
        if times >= MAX_REGRESSIONS:
            logger.error(
                message + " (%d times: not looked at again for this content; does something "
                "else write the cache?)",
                *args,
                times,
            )
        else:
            logger.warning(message, *args)
        detail = f"recheck {after_s:.1f} s after the confirm: {look.detail}; queued again"
        self._record(item, 1, started, "stale", False, detail)
