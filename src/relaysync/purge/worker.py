"""The purger's workers: due queue items dispatched round-robin between caches through each
cache's gate (purge/gates.py), run under a time budget that grows with the bytes moved
(purge/budget.py), and their outcomes: done, retried, kept for a refusing cache, or given up.

Error handling:
    CacheMisconfigured (a refusal, a bad address): logged and told to `notify` once per cache,
    "refused" in the purge log, the item kept for the gate's next probe. CacheUnreachable: the
    gate counts it (not a timeout our own loop's hold-up spent: purge/loop_lag.py), the item
    waits for the gate; when that opens the gate, `cache_unreachable` is told to `notify`, and
    `cache_reachable` when the cache answers again. Any other PurgeError or a spent budget:
    retried with backoff, up to `max_attempts` such tries, then "failed" and `purge_failed`.
    Anything else is a bug: logged with its traceback, `purger_failing`, retried.
    VariantBanRefused (a VCL without BAN refused a file's query-string variant ban): "failed"
    once in the purge log, not retried, no notification, the gate left as it is (the ban is
    best-effort on top of the file's own refresh); one warning per cache per refusal streak.
Resource handling:
    A task per item in flight, no more than the overall concurrency; the gates' counts are
    released in a finally.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup

from relaysync.errors import (
    CacheMisconfigured,
    CacheUnreachable,
    PurgeError,
    VariantBanRefused,
)
from relaysync.purge.budget import ITEM_TIMEOUT_S, MIN_BYTES_PER_S, budgeted
from relaysync.purge.confirm import Served, run_item
from relaysync.purge.drivers import Driver, make_driver
from relaysync.purge.due import Due, UrlKey, file_due, in_id_order, probe_due
from relaysync.purge.folds import Untried
from relaysync.purge.gates import PROBE_MAX_S, PROBE_MIN_S, REFUSED_PROBE_S, Gate
from relaysync.purge.jobs import PurgeItem, PurgeResult, QueuedPurge, Retry
from relaysync.purge.loop_lag import LoopLag
from relaysync.purge.recheck import RECHECK_AFTER_S, Rechecks, RecheckWorker
from relaysync.purge.site import CacheSpec, SiteSpec, specs_by_address

logger = logging.getLogger("relaysync.purge.purger")  # one logger name for the purger's story

MAX_ATTEMPTS = 10  # tries of an item the cache answered but did not do, before giving up
CONCURRENCY = 64  # purge items in flight at once, over every cache...
PER_CACHE = 16  # ...and at most this many of one cache (half the concurrency if that is less)

Notify = Callable[[str, dict[str, Any]], None]
PASS_SHARE = 3.0  # after a pass over the queue, this many times its length passes before the
MAX_PASS_GAP_S = 0.25  # next (at most this): passes take at most a quarter of the event loop


class PurgeWorker(RecheckWorker):
    """The working half of the Purger (mixed into it); the Purger owns the state below."""

    notify: Notify | None
    listeners: list[Callable[[PurgeResult], None]]
    retry_min_s: float
    retry_max_s: float
    _sites: dict[int, SiteSpec]
    _states: dict[str, str]
    _drivers: dict[tuple[int, str], Driver]
    _queue: dict[int, QueuedPurge]
    _untried: Untried  # the items of `_queue` not tried yet: changed only with it
    _busy: set[UrlKey]
    _done: list[int]
    _results: list[PurgeResult]
    _retries: list[Retry]
    _work_wake: anyio.Event
    _client: httpx.AsyncClient | None
    _unverified: httpx.AsyncClient | None  # for https caches with tls_verify off
    _lag: LoopLag  # whether a timeout measured the cache or our own loop's hold-up

    def _init_work(
        self,
        *,
        concurrency: int,
        per_cache: int | None,
        probe_min_s: float = PROBE_MIN_S,
        probe_max_s: float = PROBE_MAX_S,
        refused_probe_s: float = REFUSED_PROBE_S,
        max_attempts: int = MAX_ATTEMPTS,
        recheck_after_s: tuple[float, ...] = RECHECK_AFTER_S,
    ) -> None:
        self._concurrency = concurrency
        self._queue = {}
        self._untried = Untried()
        self.rechecks = Rechecks(recheck_after_s)
        self._in_flight = 0
        self._gates: dict[str, Gate] = {}
        self._gate_args = {
            "limit": per_cache or min(PER_CACHE, max(1, concurrency // 2)),
            "probe_min_s": probe_min_s,
            "probe_max_s": probe_max_s,
            "refused_probe_s": refused_probe_s,
        }
        self.max_attempts = max_attempts
        self._strikes: dict[int, int] = {}  # queue id -> tries the cache answered but failed
        self._requeued = False  # an item was put back out of id order (`_retry`)
        self._variant_bans_refused: set[str] = set()  # caches (addresses) refusing them now

    def _put(self, q: QueuedPurge) -> None:
        """Put `q` in the queue (queued, put back for a retry, or changed in place)."""
        old = self._queue.get(q.id)
        if old is not None:
            self._untried.discard(old)
        self._queue[q.id] = q
        self._untried.add(q)

    def _unqueue(self, queue_id: int) -> None:
        """Take an item out of the queue (for a try)."""
        self._untried.discard(self._queue.pop(queue_id))

    def _new_gate(self) -> Gate:
        return Gate(**self._gate_args)  # type: ignore[arg-type]

    def _reset_changed_gates(self, old: dict[int, SiteSpec], new: dict[int, SiteSpec]) -> None:
        """A cache whose configuration changed is tried at once: a fresh gate (Gate.replaced),
        and its queued items that wait (a refusing cache's for REFUSED_PROBE_S) are due now.
        The gate of an address no site has any more goes, once no try of it is out."""
        before, after = specs_by_address(old), specs_by_address(new)
        for address, gate in list(self._gates.items()):
            if address not in after and gate.in_flight <= 0:
                del self._gates[address]
            elif before.get(address) != after.get(address):
                self._gates[address] = gate.replaced()
        changed = {
            (site.id, cache.name)
            for site in new.values()
            for cache in site.caches
            if old.get(site.id) is None or cache not in old[site.id].caches
        }
        for q in list(self._queue.values()):
            if q.next_at > 0 and (q.item.site_id, q.item.cache) in changed:
                self._put(dataclasses.replace(q, next_at=0.0))
        self._work_wake.set()

    def _backoff_s(self, failures: int) -> float:
        return min(self.retry_max_s, self.retry_min_s * 2 ** max(0, failures - 1))

    def _failing(self, what: str, exc: Exception, failures: int) -> None:
        """Report an unexpected exception (a bug): logged in full, and told to `notify`."""
        logger.error(
            "purger: unexpected error %s (attempt %d), will retry in %.1f s",
            what,
            failures,
            self._backoff_s(failures),
            exc_info=exc,
        )
        if self.notify is not None:
            self.notify(
                "purger_failing",
                {"what": what, "error": f"{type(exc).__name__}: {exc}", "attempts": failures},
            )

    def _driver(self, site: SiteSpec, cache: CacheSpec) -> Driver:
        key = (site.id, cache.name)
        driver = self._drivers.get(key)
        if driver is None or driver.cache != cache:
            client = self._client if cache.tls_verify else self._unverified
            driver = self._drivers[key] = make_driver(cache, client or httpx.AsyncClient())
        return driver

    def _gate_key(self, site_id: int, cache_name: str) -> str:
        """Gates are per cache server (its address), whichever sites it serves."""
        site = self._sites.get(site_id)
        cache = next((c for c in site.caches if c.name == cache_name), None) if site else None
        return cache.address if cache is not None else f"{site_id}/{cache_name}"

    def _gate(self, key: str) -> Gate:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = self._new_gate()
        return gate

    def _origin_urls(self, site: SiteSpec) -> list[str]:
        return [
            o.url
            for o in site.origins
            if o.url and (not o.node_id or self._states.get(o.node_id) == "up")
        ]

    async def _work_loop(self, tg: TaskGroup) -> None:
        """Each pass files the due items by cache and URL, oldest first (purge/due.py), and
        starts what the gates admit. A pass reads the whole queue, so passes are spaced
        (PASS_SHARE): with tens of thousands of items queued, a pass on every finished try
        would take the event loop from the requests in flight."""
        while True:
            started = time.perf_counter()
            now = time.time()
            if self._requeued:  # a retried item goes back to its place (its id), not last
                in_id_order(self._queue)
                self._requeued = False
            found = file_due(self._queue, self._busy, now, self._gate_key, self._gate)
            self._dispatch(tg, found.due, now)
            next_at = found.next_at
            for key in found.due:
                next_at = min(next_at, probe_due(self._gate(key), now))
            next_at = min(next_at, self._dispatch_rechecks(tg, now, found.pending))
            ended = time.perf_counter()
            with anyio.move_on_after(max(0.0, next_at - time.time())):
                await self._work_wake.wait()
            self._work_wake = anyio.Event()
            gap = min(MAX_PASS_GAP_S, PASS_SHARE * (ended - started))
            rest = ended + gap - time.perf_counter()
            if rest > 0:  # (anyio refuses a negative delay: the loop would end)
                await anyio.sleep(rest)

    def _dispatch(self, tg: TaskGroup, due: Due, now: float) -> None:
        """Start due groups round-robin between caches, each as its gate admits, while the
        overall concurrency allows. A URL with another action in flight waits for it."""
        queues = {key: iter(groups.items()) for key, groups in due.items()}
        while queues and self._in_flight < self._concurrency:
            for key, groups in list(queues.items()):
                if self._in_flight >= self._concurrency:
                    return
                gate = self._gate(key)
                started = False
                for (url_key, _), group in groups:
                    if url_key in self._busy:  # another action on this URL started first
                        continue
                    if not gate.admit(now):
                        break
                    for q in group:
                        self._unqueue(q.id)
                    self._busy.add(url_key)
                    self._in_flight += 1
                    tg.start_soon(self._run, url_key, group, gate)
                    started = True
                    break
                if not started:
                    del queues[key]

    async def _run(self, key: UrlKey, group: list[QueuedPurge], gate: Gate) -> None:
        item = group[0].item
        attempts = max(q.attempts for q in group) + 1  # (strikes count the newest item's)
        try:
            await self._run_item(item, group, attempts, gate)
        except Exception as exc:
            self._failing(f"running {item.action} {item.url} on {item.cache}", exc, attempts)
            self._retry(item, group, attempts, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            gate.release()
            self._in_flight -= 1
            self._busy.discard(key)
            self._work_wake.set()

    async def _run_item(
        self, item: PurgeItem, group: list[QueuedPurge], attempts: int, gate: Gate
    ) -> None:
        site = self._sites.get(item.site_id)
        cache = next((c for c in site.caches if c.name == item.cache), None) if site else None
        if site is None or cache is None or self._client is None:
            self._done += [q.id for q in group]  # the site or cache was removed meanwhile
            self._forget_strikes(group)
            return
        started = time.perf_counter()
        driver = self._driver(site, cache)
        served: list[Served] = []
        try:
            with budgeted(ITEM_TIMEOUT_S, MIN_BYTES_PER_S):
                status, confirmed = await run_item(
                    driver, self._client, self._origin_urls(site), item, served
                )
        except VariantBanRefused as exc:
            self._variant_ban_refused(site, cache, item, group, attempts, started, gate, exc)
            return
        except CacheMisconfigured as exc:
            self._refused(site, item, group, attempts, started, gate, exc)
            return
        except CacheUnreachable as exc:
            held = self._lag.hold_up(exc.timeout_s)
            if held is not None and gate.excuse(held[0]):  # our loop was held up: not counted
                why = f"{exc} (our event loop was held up {held[1]:.1f} s of it: not counted)"
                self._retry(item, group, attempts, why, delay=self._backoff_s(attempts))
                return
            if gate.unreachable(time.time()):
                self._tell("cache_unreachable", site, cache, error=str(exc))
                logger.warning(
                    "cache %s failed %d times in a row: one probe every %.0f s or more "
                    "until it answers (its other purges wait): %s",
                    item.cache,
                    gate.failures,
                    gate.probe_at - time.time(),
                    exc,
                )
            self._retry(item, group, attempts, str(exc), delay=self._backoff_s(gate.failures))
            return
        except (PurgeError, TimeoutError) as exc:
            self._answered(site, cache, gate)  # it answered: the cache is up
            self._failed(site, item, group, attempts, started, str(exc) or "timed out")
            return
        if self._answered(site, cache, gate):
            logger.info("cache %s answers again: its queued purges resume", item.cache)
        if item.action == "ban" and item.url.endswith("?"):  # a variant ban went through
            self._variant_bans_refused.discard(cache.address)
        if confirmed and driver.late_fills_win:  # (a confirm found what it served)
            self.rechecks.confirmed(item, served, time.time())
        self._finish(item, group, attempts, started, status, confirmed, "")

    def _answered(self, site: SiteSpec, cache: CacheSpec, gate: Gate) -> bool:
        """The cache answered: close its gate; return whether that reopened it. One whose
        breaker had tripped (not a refusal) is told to `notify` as reachable again."""
        was_unreachable = gate.failures >= gate.trip_after
        reopened = gate.succeeded()
        if was_unreachable:
            self._tell("cache_reachable", site, cache)
        return reopened

    def _tell(self, kind: str, site: SiteSpec, cache: CacheSpec, **data: Any) -> None:
        if self.notify is not None:
            self.notify(kind, {"site": site.name, "cache": cache.name, **data})

    def _variant_ban_refused(
        self,
        site: SiteSpec,
        cache: CacheSpec,
        item: PurgeItem,
        group: list[QueuedPurge],
        attempts: int,
        started: float,
        gate: Gate,
        exc: VariantBanRefused,
    ) -> None:
        """A VCL without BAN refused a query-string variant ban: best-effort on top of the
        file's own refresh, so it is "failed" once (the message names the fix), never retried
        nor notified, and the cache's gate is not refused: its refreshes go on. The first
        refusal of a streak (until a variant ban goes through) is logged as a warning."""
        if not gate.refused:  # it answered; a refusal of its other purges stands
            self._answered(site, cache, gate)
        if cache.address not in self._variant_bans_refused:
            self._variant_bans_refused.add(cache.address)
            logger.warning(
                "cache %s refuses the bans of query-string variants (its other purges go on; "
                "such bans are dropped, each recorded failed, until one goes through): %s",
                item.cache,
                exc,
            )
        self._finish(item, group, attempts, started, "failed", None, str(exc))

    def _refused(
        self,
        site: SiteSpec,
        item: PurgeItem,
        group: list[QueuedPurge],
        attempts: int,
        started: float,
        gate: Gate,
        exc: CacheMisconfigured,
    ) -> None:
        """A configuration error: logged and told once per cache, logged as "refused" for
        each probe, and the item kept for the probe after the operator's fix."""
        if gate.refuse(time.time(), str(exc)):
            logger.error(
                "purges on cache %s stopped until its configuration is fixed (probed every "
                "%.0f s; its purges are kept): %s",
                item.cache,
                gate.refused_probe_s,
                exc,
            )
            if self.notify is not None:
                self.notify(
                    "purge_refused",
                    {"site": site.name, "cache": item.cache, "url": item.url, "error": str(exc)},
                )
        self._record(item, attempts, started, "refused", None, str(exc))
        self._retry(item, group, attempts, str(exc), delay=gate.refused_probe_s)

    def _forget_strikes(self, group: list[QueuedPurge]) -> None:
        for q in group:
            self._strikes.pop(q.id, None)

    def _failed(
        self,
        site: SiteSpec,
        item: PurgeItem,
        group: list[QueuedPurge],
        attempts: int,
        started: float,
        error: str,
    ) -> None:
        """The cache answered but the item did not succeed: retried up to max_attempts such
        tries (counted in memory: tries at a cache that was down or refusing do not count).
        A group counts the tries of its newest item: a refresh queued for a later change is
        not given up after one try because it ran with an older one that had used up its own."""
        newest = _newest(group).id  # a change queued since gets its own tries
        strikes = self._strikes.get(newest, 0) + 1
        self._forget_strikes(group)
        self._strikes[newest] = strikes
        if strikes < self.max_attempts:
            self._retry(item, group, attempts, error)
            return
        logger.error(
            "purge %s %s on %s gave up after %d attempts: %s",
            item.action,
            item.url,
            item.cache,
            attempts,
            error,
        )
        self._finish(item, group, attempts, started, "failed", False, error)
        if self.notify is not None:
            self.notify(
                "purge_failed",
                {
                    "site": site.name,
                    "cache": item.cache,
                    "url": item.url,
                    "attempts": attempts,
                    "error": error,
                },
            )

    def _finish(
        self,
        item: PurgeItem,
        group: list[QueuedPurge],
        attempts: int,
        started: float,
        status: str,
        confirmed: bool | None,
        detail: str,
    ) -> None:
        self._done += [q.id for q in group]
        self._forget_strikes(group)
        self._record(item, attempts, started, status, confirmed, detail)

    def _record(
        self,
        item: PurgeItem,
        attempts: int,
        started: float,
        status: str,
        confirmed: bool | None,
        detail: str,
    ) -> None:
        """Log one try's outcome (the purge log, the listeners)."""
        result = PurgeResult(
            item=item,
            status=status,
            confirmed=confirmed,
            attempts=attempts,
            at=time.time(),
            duration_ms=(time.perf_counter() - started) * 1000.0,
            detail=detail,
        )
        self._results.append(result)
        logger.debug("purge %s %s on %s: %s", item.action, item.url, item.cache, status)
        for listener in self.listeners:
            listener(result)

    def _retry(
        self,
        item: PurgeItem,
        group: list[QueuedPurge],
        attempts: int,
        error: str,
        *,
        delay: float | None = None,
    ) -> None:
        """Put the group back, due after `delay` (default: backoff by `attempts`)."""
        if delay is None:
            delay = self._backoff_s(attempts)
        level = logging.INFO if attempts == 1 else logging.WARNING
        logger.log(
            level,
            "purge %s %s on %s failed (attempt %d), retry in %.1f s: %s",
            item.action,
            item.url,
            item.cache,
            attempts,
            delay,
            error,
        )
        next_at = time.time() + delay
        for q in group:
            self._put(QueuedPurge(id=q.id, item=q.item, attempts=attempts, next_at=next_at))
            self._retries.append(Retry(id=q.id, attempts=attempts, next_at=next_at, error=error))
        self._requeued = True
        self._work_wake.set()


def _newest(group: list[QueuedPurge]) -> QueuedPurge:
    """The item of a group queued last (queue ids grow; a retried item keeps its id)."""
    return max(group, key=lambda q: q.id)
