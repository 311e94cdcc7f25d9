"""The purger: turns committed changes into refreshes on every cache of a site, in order,
through a durable queue with retries, and records each outcome.

Flow: JobLogWriter.add -> on_commit_report (CommitTracker: wait for every origin that is up)
-> intake (URLs per cache, planned by purge/planner.py, made durable in the store's purge
queue; the report is acknowledged to its agent only then: purge/holds.py) -> workers (purge/worker.py: driver refresh, confirm) -> purge log. A URL is worked on by one worker at a
time per cache; queued items of one URL with different actions (a refresh and a ban of /docs/)
run one after the other, oldest first, each with its own outcome.

Every cache has its own gate (purge/gates.py): at most `per_cache` of its items run at once,
dispatched round-robin between caches under the overall `concurrency`, and a circuit breaker
that, once the cache keeps failing, lets one probe item through now and then instead of its
whole backlog. A hung or refusing cache so never holds up the purges of the others.

Error handling:
    A cache that refuses purges (403/405) or has an address httpx cannot use is a
    configuration error: logged as an error and told to `notify` once per cache, recorded as
    "refused" in the purge log, and kept queued: its gate probes it every `refused_probe_s`
    (and at once after a change to its site), so that the URLs come up to date once fixed.
    A cache that does not connect or answer is retried through its gate for as long as it
    takes, told to `notify` as "cache_unreachable" when its gate opens and "cache_reachable"
    when it answers again; meanwhile a change to a URL folds into its untried queued item. Any other failure (5xx, not yet serving the new bytes, an item over its time
    budget) is retried with exponential backoff up to `max_attempts` tries (each makes the
    cache fetch the file again), then given up: "failed" in the purge log and `purge_failed`.
    A store error while planning (the paths under a deleted directory) sets the change
    aside, planned again apart with the same backoff while the others go (purge/intake.py). Anything unexpected in planning or in a worker is a bug: logged with
    its traceback, told to `notify` as "purger_failing", and retried with backoff (a change
    that fails so goes to the back of the intake, so that it does not hold up the others); it
    never ends serve().
Resource handling:
    One httpx.AsyncClient (keep-alive to every cache) lives as long as serve(); the queue's
    rows are deleted only after the outcome is written.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import httpx
from anyio.abc import TaskStatus
from anyio.lowlevel import EventLoopToken, current_token

from relaysync.errors import PrefixNotExpandable, StoreError
from relaysync.protocol.messages import CommitReport
from relaysync.purge import urls as urlmap
from relaysync.purge.drivers import Driver
from relaysync.purge.due import UrlKey
from relaysync.purge.folds import fold
from relaysync.purge.gates import PROBE_MAX_S, PROBE_MIN_S, REFUSED_PROBE_S
from relaysync.purge.holds import PurgeHold
from relaysync.purge.intake import PurgeIntake
from relaysync.purge.jobs import Action, PurgeItem, PurgeResult, Retry
from relaysync.purge.loop_lag import LoopLag
from relaysync.purge.ordering import HOLD_MAX_S, CommitTracker, Released
from relaysync.purge.planner import (
    PurgePlanner,
    PurgeStore,
    _can_ban,
    url_items,
    variant_items,
)
from relaysync.purge.recheck import RECHECK_AFTER_S
from relaysync.purge.site import SiteSpec
from relaysync.purge.worker import (
    CONCURRENCY,
    ITEM_TIMEOUT_S,
    MAX_ATTEMPTS,
    MIN_BYTES_PER_S,
    PER_CACHE,
    Notify,
    PurgeWorker,
)

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0  # one request to a cache or an origin
CONNECT_TIMEOUT_S = 2.0  # a cache that does not accept within this is down: retry later
RETRY_MIN_S = 0.2  # first retry of a failed purge; doubles per attempt...
RETRY_MAX_S = 10.0  # ...up to this, so a cache that returns is refreshed within it
FLUSH_INTERVAL_S = 0.1  # outcomes and retries are written to the store this often
STATE_INTERVAL_S = 0.25  # server states are re-read (origins going down release changes)
SITES_RELOAD_S = 5.0  # sites are re-read this often besides on every API change
# worker.py's limits, named here too: ITEM_TIMEOUT_S, MIN_BYTES_PER_S, MAX_ATTEMPTS,
# CONCURRENCY, PER_CACHE
__all__ = [
    "CONCURRENCY",
    "ITEM_TIMEOUT_S",
    "MAX_ATTEMPTS",
    "MIN_BYTES_PER_S",
    "PER_CACHE",
    "Purger",
]


class Purger(PurgeIntake, PurgeWorker, PurgePlanner):
    def __init__(
        self,
        store: PurgeStore,
        *,
        notify: Notify | None = None,
        hold_max_s: float = HOLD_MAX_S,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        concurrency: int = CONCURRENCY,
        per_cache: int | None = None,
        probe_min_s: float = PROBE_MIN_S,
        probe_max_s: float = PROBE_MAX_S,
        refused_probe_s: float = REFUSED_PROBE_S,
        max_attempts: int = MAX_ATTEMPTS,
        recheck_after_s: tuple[float, ...] = RECHECK_AFTER_S,
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
        self._aside: deque[Released] = deque()  # set aside after a store error (intake.py)
        self._aside_wake = anyio.Event()
        self._unplannable: Released | None = None  # the change whose planning last raised
        self._busy: set[UrlKey] = set()
        self._done: list[int] = []
        self._results: list[PurgeResult] = []
        self._retries: list[Retry] = []
        self._intake_wake = anyio.Event()
        self._work_wake = anyio.Event()
        self._init_work(
            concurrency=concurrency,
            per_cache=per_cache,
            probe_min_s=probe_min_s,
            probe_max_s=probe_max_s,
            refused_probe_s=refused_probe_s,
            max_attempts=max_attempts,
            recheck_after_s=recheck_after_s,
        )
        self._warned_sites: set[tuple[int, str]] = set()
        self._reloads = itertools.count()  # reload_sites' tickets, in the order they began
        self._sites_ticket = -1  # of the reload whose sites are in use
        self._taking = threading.Lock()
        # the event loop serving the purger and its thread (None, 0: not serving)
        self._loop: tuple[EventLoopToken | None, int] = (None, 0)
        self._client: httpx.AsyncClient | None = None
        self._unverified: httpx.AsyncClient | None = None  # for https caches with tls_verify off
        self._lag = LoopLag()

    # --- inputs ---

    def reload_sites(self) -> None:
        """Re-read the sites from the store (any thread; call after every change to sites).

        The store is read in the calling thread; what was read is taken on the event loop's
        thread while the purger serves (the loop's state is never changed from another thread,
        and the work loop wakes at once). Of reloads that overlap, one that began earlier and
        ends later is dropped: the later one read the store after every change before it."""
        ticket = next(self._reloads)
        sites = {s.id: s for s in self.store.list_sites()}
        # the state loop reads no states while there is no site: fresh before a report meets them
        states = self.store.server_states() if sites and not self._sites else None
        token, loop_thread = self._loop
        if token is not None and threading.get_ident() != loop_thread:
            try:
                anyio.from_thread.run_sync(self._take_sites, ticket, sites, states, token=token)
                return
            except RuntimeError:
                if self._loop[0] is not None:
                    raise
                # the loop ended meanwhile: nothing else runs the purger now
        self._take_sites(ticket, sites, states)

    def _take_sites(
        self, ticket: int, sites: dict[int, SiteSpec], states: dict[str, str] | None
    ) -> None:
        with self._taking:  # (on the loop's thread while serving; API threads' at start or end)
            if ticket < self._sites_ticket:  # a reload begun later was taken already
                return
            self._sites_ticket = ticket
            self._take(sites, states)

    def _take(self, sites: dict[int, SiteSpec], states: dict[str, str] | None) -> None:
        if states is not None:
            self._states = states
        by_mapping: dict[int, list[SiteSpec]] = {}
        for site in sites.values():
            if site.mapping_id is not None:
                by_mapping.setdefault(site.mapping_id, []).append(site)
        for gone in set(self._sites) - set(sites):
            self._released.extend(self.tracker.forget_site(gone))  # the intake plans none
            self._intake_wake.set()
        self._reset_changed_gates(self._sites, sites)
        self._warn_sites(sites)
        self._sites, self._by_mapping = sites, by_mapping
        self._drivers = {
            k: d
            for k, d in self._drivers.items()
            if k[0] in sites and d.cache in sites[k[0]].caches
        }

    def _warn_sites(self, sites: dict[int, SiteSpec]) -> None:
        """Log what a site should fix, once per site and warning."""
        for site in sites.values():
            for warning in site.warnings():
                if (site.id, warning) not in self._warned_sites:
                    self._warned_sites.add((site.id, warning))
                    logger.warning("site %s: %s", site.name, warning)

    def on_commit_report(self, report: CommitReport) -> PurgeHold | None:
        """JobLogWriter subscription: fold a target's commits (on the event loop's thread).
        Returns the report's hold while a purge it released or waits on is not queued: the job
        log acknowledges the report once it is done (purge/holds.py)."""
        now = time.time()
        hold = PurgeHold()
        try:
            self._observe(report, now, hold)
        except Exception:  # a bug midway: what was released is queued and waited for
            logger.exception("purger: a commit report could not be taken in whole")
        hold.seal()
        return None if hold.done else hold

    def _observe(self, report: CommitReport, now: float, hold: PurgeHold) -> None:
        for site in self._by_mapping.get(report.mapping_id, ()):
            origins = site.origin_nodes()
            if report.target_node not in origins:
                continue
            released: list[Released] = []
            try:
                self.tracker.observe(
                    site_id=site.id,
                    mapping_id=report.mapping_id,
                    origins=origins,
                    source=report.source_node,
                    target=report.target_node,
                    records=report.records,
                    states=self._states,
                    now=now,
                    journal_id=report.journal_id,
                    hold=hold,
                    out=released,
                )
            finally:
                if released:
                    self._released.extend(released)
                    self._intake_wake.set()

    def barrier(self) -> PurgeHold | None:
        """A hold done once every change released so far is queued (None: none waits): the job
        log keeps the reports it read back from its spool there until then (master/joblog.py),
        since their agents were told they were taken when they were spooled."""
        hold = PurgeHold()
        for change in (*self._released, *self._aside):
            change.waiters.add(hold)
        hold.seal()
        return None if hold.done else hold

    async def submit(
        self,
        site: SiteSpec,
        urls: Sequence[str],
        action: Action = "refresh",
        *,
        variants: bool = False,
    ) -> int:
        """Queue `urls` (normalised, of `site`) on every cache of the site; with `variants`
        (the URLs of a file), a ban of their query-string variants follows on the caches
        that take one (SiteSpec.bans_query_variants). Return how many items."""
        items: list[PurgeItem] = []
        for cache in site.caches:
            items += url_items(site.id, cache.name, urls, action)
            if variants and site.bans_query_variants(cache):
                items += variant_items(site.id, cache.name, urls)
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
        self._loop = (current_token(), threading.get_ident())
        try:
            await self._serve(task_status)
        finally:
            self._loop = (None, 0)

    async def _serve(self, task_status: TaskStatus[None]) -> None:
        await anyio.to_thread.run_sync(self.reload_sites)
        self._states = await anyio.to_thread.run_sync(self.store.server_states)
        await self._load_queue()
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with (
            httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client,
            httpx.AsyncClient(
                timeout=timeout, limits=limits, trust_env=False, verify=False
            ) as unverified,
        ):
            self._client, self._unverified = client, unverified
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(self._lag.serve)
                    tg.start_soon(self._intake_loop)
                    tg.start_soon(self._aside_loop)
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

    async def _load_queue(self) -> None:
        """Take the queue the store holds (what was queued before a restart)."""
        for queued in await anyio.to_thread.run_sync(self.store.pending_purges):
            self._put(queued)

    async def _enqueue(self, items: list[PurgeItem]) -> None:
        """Queue `items`, folding each into a queued item of its (site, cache, URL, action) that
        has not been tried yet (folds.py): while a cache is down, its queue does not grow a row
        per change."""
        while items:
            fresh, folded = fold(items, self._untried)
            await self._write_queue(fresh)
            # what was folded into an item that started meanwhile (the write awaited) is
            # queued after all: that try may have begun before the change was committed
            items = [i for i in folded if i not in self._untried]

    async def _write_queue(self, items: list[PurgeItem]) -> None:
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
        last = next(reversed(self._queue), -1)
        for q in queued:  # concurrent writes (PostgreSQL) may return ids out of order
            self._requeued = self._requeued or q.id < last
            self._put(q)
            last = max(last, q.id)
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

    @property
    def queued(self) -> int:
        """Purges waiting in memory (due or backing off), not counting those in flight."""
        return len(self._queue)

    def site_by_name(self, name: str) -> SiteSpec | None:
        """The site called `name`, as last loaded."""
        return next((s for s in self._sites.values() if s.name == name), None)
