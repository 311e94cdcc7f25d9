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
`limit` wait (memory); past that the oldest is dropped and counted.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass

from relaysync.purge.jobs import PurgeItem

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
