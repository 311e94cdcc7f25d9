"""The purger: turns committed changes into refreshes on every cache of a site, in order,
through a durable queue with retries, and records each outcome.

Flow: JobLogWriter.add -> on_commit_report (CommitTracker: wait for every origin that is up)
-> intake (URLs per cache, planned by purge/planner.py, made durable in the store's purge
queue) -> workers (driver refresh, confirm) -> purge log. A URL is worked on by one worker at a
time per cache; queued items of one URL with different actions (a refresh and a ban of /docs/)
run one after the other, oldest first, each with its own outcome.

Error handling:
    A cache that refuses purges (403/405) is a configuration error: logged as an error, told
    to `notify`, recorded as "refused" and not retried. Any other failure (cache down, not yet
    serving the new bytes) is retried with exponential backoff, for as long as it takes.
    A store error while planning (the paths under a deleted directory) leaves the change at
    the head of the intake and retries it with the same backoff. Anything unexpected in
    planning or in a worker is a bug: logged with its traceback, told to `notify` as
    "purger_failing", and retried with backoff (a change that fails so goes to the back of the
    intake, so that it does not hold up the others); it never ends serve().
Resource handling:
    One httpx.AsyncClient (keep-alive to every cache) lives as long as serve(); the queue's
    rows are deleted only after the outcome is written.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus

from relaysync.errors import CacheRefused, PrefixNotExpandable, PurgeError, StoreError
from relaysync.protocol.messages import CommitReport
from relaysync.purge import urls as urlmap
from relaysync.purge.confirm import run_item
from relaysync.purge.drivers import Driver, make_driver
from relaysync.purge.jobs import Action, PurgeItem, PurgeResult, QueuedPurge, Retry
from relaysync.purge.listings import ListingRefreshes
from relaysync.purge.ordering import HOLD_MAX_S, CommitTracker, Released
from relaysync.purge.planner import PurgePlanner, PurgeStore, _can_ban, url_items
from relaysync.purge.site import CacheSpec, SiteSpec

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0  # one request to a cache or an origin
CONNECT_TIMEOUT_S = 2.0  # a cache that does not accept within this is down: retry later
ITEM_TIMEOUT_S = 15.0  # refresh plus confirm of one URL on one cache
RETRY_MIN_S = 0.2  # first retry of a failed purge; doubles per attempt...
RETRY_MAX_S = 10.0  # ...up to this, so a cache that returns is refreshed within it
FLUSH_INTERVAL_S = 0.1  # outcomes and retries are written to the store this often
STATE_INTERVAL_S = 0.25  # server states are re-read (origins going down release changes)
SITES_RELOAD_S = 5.0  # sites are re-read this often besides on every API change
CONCURRENCY = 64  # purge requests in flight at once, over every cache


Notify = Callable[[str, dict[str, Any]], None]
UrlKey = tuple[int, str, str]  # (site id, cache name, url)
GroupKey = tuple[int, str, str, str]  # (site id, cache name, url, action)


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


class Purger(PurgePlanner):
    def __init__(
        self,
        store: PurgeStore,
        *,
        notify: Notify | None = None,
        hold_max_s: float = HOLD_MAX_S,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.store = store
        self.notify = notify
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.tracker = CommitTracker(hold_max_s=hold_max_s)
        self.listeners: list[Callable[[PurgeResult], None]] = []
        self._sites: dict[int, SiteSpec] = {}
        self._by_mapping: dict[int, list[SiteSpec]] = {}
        self._drivers: dict[tuple[int, str], Driver] = {}
        self._states: dict[str, str] = {}
        self._released: deque[Released] = deque()
        self._queue: dict[int, QueuedPurge] = {}
        self._busy: set[UrlKey] = set()
        self._done: list[int] = []
        self._results: list[PurgeResult] = []
        self._retries: list[Retry] = []
        self._intake_wake = anyio.Event()
        self._work_wake = anyio.Event()
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._client: httpx.AsyncClient | None = None

    # --- inputs ---

    def reload_sites(self) -> None:
        """Re-read the sites from the store (any thread; call after every change to sites)."""
        sites = {s.id: s for s in self.store.list_sites()}
        if sites and not self._sites:  # the state loop reads no states while there is no site
            self._states = self.store.server_states()  # fresh before a report meets the sites
        by_mapping: dict[int, list[SiteSpec]] = {}
        for site in sites.values():
            if site.mapping_id is not None:
                by_mapping.setdefault(site.mapping_id, []).append(site)
        for gone in set(self._sites) - set(sites):
            self.tracker.forget_site(gone)
        self._sites, self._by_mapping = sites, by_mapping
        self._drivers = {
            k: d
            for k, d in self._drivers.items()
            if k[0] in sites and d.cache in sites[k[0]].caches
        }

    def on_commit_report(self, report: CommitReport) -> None:
        """JobLogWriter subscription: fold a target's commits (on the event loop's thread)."""
        now = time.time()
        for site in self._by_mapping.get(report.mapping_id, ()):
            origins = site.origin_nodes()
            if report.target_node not in origins:
                continue
            released = self.tracker.observe(
                site_id=site.id,
                origins=origins,
                source=report.source_node,
                target=report.target_node,
                records=report.records,
                states=self._states,
                now=now,
            )
            if released:
                self._released.extend(released)
                self._intake_wake.set()

    async def submit(self, site: SiteSpec, urls: Sequence[str], action: Action = "refresh") -> int:
        """Queue `urls` (normalised, of `site`) on every cache of the site; return how many items."""
        items = [i for c in site.caches for i in url_items(site.id, c.name, urls, action)]
        await self._enqueue(items)
        return len(items)

    async def submit_prefix(self, site: SiteSpec, rel_dir: str) -> int:
        """Queue everything under directory `rel_dir` (relative to the site root; "" is all).

        Raises:
            PrefixNotExpandable: the site has no mapping whose job log lists the paths under
                the prefix, and a cache of it takes no bans.
            StoreError: the paths under the prefix could not be read.
        """
        if site.mapping_id is None:
            no_ban = [c.name for c in site.caches if not _can_ban(c)]
            if no_ban:
                raise PrefixNotExpandable(
                    site.name,
                    "/" + rel_dir.strip("/"),
                    f"caches {', '.join(no_ban)} take no prefix purges and the site has no "
                    f"mapping whose changes list the paths under it; send each URL instead",
                )
        change = Released(site.id, "prefix", urlmap.mapping_path(site, rel_dir))
        items = await self._plan(site, change)
        await self._enqueue(items)
        return len(items)

    # --- serving ---

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the purger until cancelled."""
        await anyio.to_thread.run_sync(self.reload_sites)
        self._states = await anyio.to_thread.run_sync(self.store.server_states)
        for queued in await anyio.to_thread.run_sync(self.store.pending_purges):
            self._queue[queued.id] = queued
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
            self._client = client
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._intake_loop)
                    tg.start_soon(self._state_loop)
                    tg.start_soon(self._flush_loop)
                    tg.start_soon(self._work_loop, tg)
                    logger.info(
                        "purger running: %d sites, %d queued purges",
                        len(self._sites),
                        len(self._queue),
                    )
                    task_status.started()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._flush()

    def _backoff_s(self, failures: int) -> float:
        return min(self.retry_max_s, self.retry_min_s * 2 ** max(0, failures - 1))

    async def _intake_loop(self) -> None:
        failures = 0
        while True:
            if not self._released:
                await self._intake_wake.wait()
            self._intake_wake = anyio.Event()
            try:
                await self._intake()
                failures = 0
                continue
            except StoreError as exc:
                failures += 1
                logger.warning(
                    "purge planning could not read the store (attempt %d), "
                    "will retry in %.1f s: %s",
                    failures,
                    self._backoff_s(failures),
                    exc,
                )
            except Exception as exc:
                failures += 1
                self._failing("planning a change", exc, failures)
                if self._released:  # it stays queued, behind the others
                    self._released.rotate(-1)
            await anyio.sleep(self._backoff_s(failures))

    async def _intake(self) -> None:
        """Plan and queue the released changes; one leaves `_released` only once it is queued.
        The directory listings they alter are refreshed after them, each once.

        Raises:
            StoreError, or anything else: planning the change now at the head failed; the
                changes planned before it are queued.
        """
        items: list[PurgeItem] = []
        listings = ListingRefreshes()
        planned = 0
        failure: Exception | None = None
        for change in list(self._released):
            site = self._sites.get(change.site_id)
            try:
                if site is not None:
                    items += await self._plan(site, change)
                    listings.add(site, change)
            except Exception as exc:  # noqa: BLE001 - queue what was planned, then re-raise
                failure = exc
                break
            planned += 1
        items += _listing_items(items, listings)
        await self._enqueue(items)
        for _ in range(planned):
            self._released.popleft()
        if failure is not None:
            raise failure

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

    async def _enqueue(self, items: list[PurgeItem]) -> None:
        if not items:
            return
        failures = 0
        while True:
            try:
                queued = await anyio.to_thread.run_sync(self.store.enqueue_purges, items)
                break
            except StoreError as exc:
                failures += 1
                logger.warning("purge queue write failed, will retry: %s", exc)
                await anyio.sleep(self._backoff_s(failures))
        for q in queued:
            self._queue[q.id] = q
        self._work_wake.set()

    async def _state_loop(self) -> None:
        last_reload = time.monotonic()
        while True:
            await anyio.sleep(STATE_INTERVAL_S)
            try:
                if self._sites:  # else nothing reads them (reload_sites reads them for the first)
                    self._states = await anyio.to_thread.run_sync(self.store.server_states)
                if time.monotonic() - last_reload > SITES_RELOAD_S:
                    last_reload = time.monotonic()
                    await anyio.to_thread.run_sync(self.reload_sites)
            except StoreError as exc:
                logger.warning("purger could not read the store, will retry: %s", exc)
                continue
            released = self.tracker.sweep(self._states, time.time())
            if released:
                self._released.extend(released)
                self._intake_wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await anyio.sleep(FLUSH_INTERVAL_S)
            await self._flush()

    async def _flush(self) -> None:
        if not (self._done or self._results or self._retries):
            return
        done, results, retries = self._done, self._results, self._retries
        self._done, self._results, self._retries = [], [], []
        try:
            await anyio.to_thread.run_sync(self.store.finish_purges, done, results, retries)
        except StoreError as exc:
            logger.warning("purge log write failed, will retry: %s", exc)
            self._done[:0], self._results[:0], self._retries[:0] = done, results, retries

    # --- working ---

    def _driver(self, site: SiteSpec, cache: CacheSpec) -> Driver:
        key = (site.id, cache.name)
        driver = self._drivers.get(key)
        if driver is None or driver.cache != cache:
            driver = self._drivers[key] = make_driver(cache, self._client or httpx.AsyncClient())
        return driver

    def _origin_urls(self, site: SiteSpec) -> list[str]:
        return [
            o.url
            for o in site.origins
            if o.url and (not o.node_id or self._states.get(o.node_id) == "up")
        ]

    async def _work_loop(self, tg: TaskGroup) -> None:
        while True:
            now = time.time()
            groups: dict[GroupKey, list[QueuedPurge]] = {}
            next_at = now + 1.0
            for q in self._queue.values():
                if (q.item.site_id, q.item.cache, q.item.url) in self._busy:
                    continue
                if q.next_at <= now:
                    key = (q.item.site_id, q.item.cache, q.item.url, q.item.action)
                    groups.setdefault(key, []).append(q)
                else:
                    next_at = min(next_at, q.next_at)
            for (site_id, cache, url, _action), group in groups.items():
                url_key = (site_id, cache, url)
                if url_key in self._busy:  # another action on this URL started first: wait for it
                    continue
                for q in group:
                    del self._queue[q.id]
                self._busy.add(url_key)
                tg.start_soon(self._run, url_key, group)
            with anyio.move_on_after(max(0.0, next_at - time.time())):
                await self._work_wake.wait()
            self._work_wake = anyio.Event()

    async def _run(self, key: UrlKey, group: list[QueuedPurge]) -> None:
        item = group[0].item
        attempts = max(q.attempts for q in group) + 1
        try:
            async with self._limiter:
                await self._run_item(item, group, attempts)
        except Exception as exc:
            self._failing(f"running {item.action} {item.url} on {item.cache}", exc, attempts)
            self._retry(item, group, attempts, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._busy.discard(key)
            self._work_wake.set()

    async def _run_item(self, item: PurgeItem, group: list[QueuedPurge], attempts: int) -> None:
        site = self._sites.get(item.site_id)
        cache = next((c for c in site.caches if c.name == item.cache), None) if site else None
        if site is None or cache is None or self._client is None:
            self._done += [q.id for q in group]  # the site or cache was removed meanwhile
            return
        started = time.perf_counter()
        try:
            with anyio.fail_after(ITEM_TIMEOUT_S):
                status, confirmed = await run_item(
                    self._driver(site, cache), self._client, self._origin_urls(site), item
                )
        except CacheRefused as exc:
            logger.error("purge refused, giving up: %s", exc)
            self._finish(item, group, attempts, started, "refused", None, str(exc))
            if self.notify is not None:
                self.notify(
                    "purge_refused",
                    {"site": site.name, "cache": cache.name, "url": item.url, "error": str(exc)},
                )
            return
        except (PurgeError, TimeoutError) as exc:
            self._retry(item, group, attempts, str(exc) or "timed out")
            return
        self._finish(item, group, attempts, started, status, confirmed, "")

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
        result = PurgeResult(
            item=item,
            status=status,
            confirmed=confirmed,
            attempts=attempts,
            at=time.time(),
            duration_ms=(time.perf_counter() - started) * 1000.0,
            detail=detail,
        )
        self._done += [q.id for q in group]
        self._results.append(result)
        logger.debug("purge %s %s on %s: %s", item.action, item.url, item.cache, status)
        for listener in self.listeners:
            listener(result)

    def _retry(self, item: PurgeItem, group: list[QueuedPurge], attempts: int, error: str) -> None:
        delay = min(self.retry_max_s, self.retry_min_s * 2 ** (attempts - 1))
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
            self._queue[q.id] = QueuedPurge(
                id=q.id, item=q.item, attempts=attempts, next_at=next_at
            )
            self._retries.append(Retry(id=q.id, attempts=attempts, next_at=next_at, error=error))
        self._work_wake.set()

    @property
    def queued(self) -> int:
        """Purges waiting in memory (due or backing off), not counting those in flight."""
        return len(self._queue)

    def site_by_name(self, name: str) -> SiteSpec | None:
        """The site called `name`, as last loaded."""
        return next((s for s in self._sites.values() if s.name == name), None)
