"""The job log writer: commit reports are queued at once and written to the store in batches.

A burst of 10,000 changes never waits on the store: `add` only appends to a queue; a task
flushes it every JOB_LOG_FLUSH_INTERVAL_S (or sooner when it grows) in one transaction, in a
worker thread. Failed records also go to the event bus. The watermarks reported are kept in
memory as reports arrive (what was taken; the API's lag figures come from the store's).

Bounded memory: past `max_queued_records` in memory (the store down or behind), reports go to a
spool on disk (master/joblog_spool.py), and every later one too until it is drained, so that
they are written in the order they came. The queue goes there first, and the batch in flight
once its write fails (in front): so every report held is taken (acknowledged, see
master/report_acks.py) while the store is down. The spool is written in batches of
FLUSH_RECORDS. A task of its own moves reports to disk, so memory stays bounded while a store
write hangs too. A previous run's spool is written first; on stop (`stop`, or a cancel), the
queue is written unless the store is failing, and what is left in memory goes to the spool (the
queue in front), so nothing is lost. Watermarks, events and subscribers see every report at once;
subscribers see a previous run's spooled reports again as they are read back (after the purger's
start: master/service.py), since the purge that run released for them may not have been queued;
reports read back stay in the spool until their purges are queued (purge/holds.py).

Error handling: a batch the store itself fails (down, locked, disk full: `store_unavailable`)
goes back in front of the queue and is retried as it is with the next flush, dropping nothing.
Any other failure is the data's (a value the store refuses) or a bug, which a retry of the same
batch meets again: the batch is written in pieces at once (halves, down to single reports, then
single records), so that a record the store refuses for what it holds is dropped alone, with an
error naming it, and every other agent's commits are written without waiting (three flushes of
retries held them all). Any exception counts (a bug is logged with its traceback): the writer's task
never ends but by cancellation, which would end the master's task group with it. A spool that
cannot be written (a full disk) is logged as an error and its reports stay in memory, over the
bound, rather than be lost.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from relaysync.constants import JOB_LOG_FLUSH_INTERVAL_S
from relaysync.master._joblog_parts import (
    LiveWatermarks,
    OnceWhileFailing,
    ReadBackPurges,
    Spooling,
    Subscribers,
    first_records,
    log_failure,
    log_spool_failure,
    record_conflicts,
)
from relaysync.master._joblog_pieces import WritingInPieces
from relaysync.master.events import EventBus, EventType
from relaysync.master.joblog_spool import JobLogSpool
from relaysync.master.report_acks import Receipts
from relaysync.master.store import store_unavailable
from relaysync.master.store.store import Store
from relaysync.protocol.messages import CommitReport
from relaysync.purge.holds import PurgeHold

logger = logging.getLogger(__name__)

FLUSH_RECORDS = 5_000  # flush early when this many records are waiting
# Records in memory while the store is behind, the rest on disk. A decoded record is 0.5-0.9 KB
# (tracemalloc: reports of 100 records, of 1), so 100-170 MB; 10 M records (a 10-minute outage,
# 1,000 changes/s to 16 targets) were 5-9 GB. On disk a record takes 210-450 bytes.
MAX_QUEUED_RECORDS = 200_000
# Reports read back from the spool stay there until the purger queued their purges, this long at
# most: it retries a failed purge queue write every 10 s at most (purge/purger.py RETRY_MAX_S).
SPOOL_PURGE_WAIT_S = 60.0


class JobLogWriter(WritingInPieces):
    """Commit reports, queued at once and written in batches; see the module's docstring.

    Args:
        spool_dir: where reports past `max_queued_records` wait on disk; None: no bound.
        max_queued_records: records kept in memory before the spool takes the rest.
    """

    def __init__(
        self,
        store: Store,
        events: EventBus,
        *,
        spool_dir: Path | None = None,
        max_queued_records: int = MAX_QUEUED_RECORDS,
    ) -> None:
        self.store = store
        self.events = events
        self._queue: deque[CommitReport] = deque()
        self._queued_records = 0
        self._writing_records = 0  # taken from the queue by the write in progress
        self._wake = anyio.Event()
        self._live = LiveWatermarks()
        self.watermarks = self._live.seqs  # the highest reported, per (mapping, source, target)
        self.written_reports = 0
        self.dropped_records = 0  # refused by the store for what they hold (logged as errors)
        self._failures = 0  # flushes in a row the batch at the head of the queue failed
        self._subscribers = Subscribers()
        self._spool = JobLogSpool(spool_dir) if spool_dir is not None else None
        self.max_queued_records = max_queued_records
        self._spooling: Spooling | None = None  # from the bound passed until the spool is drained
        self._tail: list[CommitReport] = []  # reports taken while spooling, not yet on disk
        self._tail_records = 0
        self._appending_records = 0  # the tail being appended to the spool
        self._spool_wake = anyio.Event()
        self._spool_lock = anyio.Lock()  # one spool call at a time (each in a worker thread)
        self._loaded = False  # the queue holds reports read back from the spool, not released
        self._receipts = Receipts()  # what to call once a report is in the store or spool
        self._read_back = ReadBackPurges(SPOOL_PURGE_WAIT_S)  # purges of reports read back
        self._release_failures = OnceWhileFailing("releasing written reports from the spool")
        self._serving: anyio.CancelScope | None = None  # `serve`'s, once it runs
        self._stopped = anyio.Event()  # `serve` ended: its last flush and the spool's are done

    @property
    def spooled_records(self) -> int:
        """Records waiting in the spool: on disk, or on their way there."""
        on_disk = self._spool.records if self._spool is not None else 0
        return on_disk + self._appending_records + self._tail_records

    @property
    def queued_records(self) -> int:
        """Records queued in memory or being written. With `spooled_records`, what is not yet
        in the store (a batch read back from the spool and not yet written counts in both)."""
        return self._queued_records + self._writing_records

    def subscribe(
        self,
        callback: Callable[[CommitReport], PurgeHold | None],
        *,
        barrier: Callable[[], PurgeHold | None] | None = None,
    ) -> None:
        """Call `callback(report)` with every commit report as it arrives (on the loop's thread;
        it must not block: the purger needs commits within milliseconds, not per flush), and
        with those a previous run spooled, as they are read back. A hold it returns defers the
        `taken` of a report written to the store; one `barrier()` returns (done once every
        report told so far is) keeps those read back in the spool till then (ReadBackPurges)."""
        self._subscribers.add(callback, barrier)

    def add(self, report: CommitReport, *, taken: Callable[[], None] | None = None) -> None:
        """Queue a report; `taken()` is called (on the loop's thread) once it is in the spool,
        or in the store and the purges it released are queued, so that it survives a kill of
        the master; never for one lost (a failed spool write on stop), but for one refused."""
        self._live.observe(report)
        for record in report.records:
            if not record.ok:
                self.events.publish(
                    EventType.COMMIT_FAILED,
                    mapping_id=report.mapping_id,
                    target=report.target_node,
                    seq=record.seq,
                    path=record.path,
                    error=record.error,
                )
        holds = self._subscribers.tell(report)
        if taken is not None:
            self._receipts.hold(report, taken, holds)
        self._enqueue(report)

    def _enqueue(self, report: CommitReport) -> None:
        records = len(report.records)
        if self._spooling is not None or self._over_bound(records):
            if self._spooling is None:
                self._start_spooling()
            self._tail.append(report)
            self._tail_records += records
            if self._tail_records >= FLUSH_RECORDS:
                self._spool_wake.set()
            return
        self._queue.append(report)
        self._queued_records += records
        if self._queued_records >= FLUSH_RECORDS:
            self._wake.set()

    def _over_bound(self, records: int) -> bool:
        held = self._queued_records + self._writing_records + records
        return self._spool is not None and held > self.max_queued_records

    def _start_spooling(self, replayed: int = 0) -> None:
        assert self._spool is not None
        self._spooling = Spooling(started=time.monotonic(), replayed=replayed)
        if replayed:
            logger.warning(
                "job log: %s records spooled to %s by the last run, writing them first",
                replayed,
                self._spool.directory,
            )
            return
        logger.warning(
            "job log: the store is behind, spooling to %s (%s records queued)",
            self._spool.directory,
            self._queued_records + self._writing_records,
        )
        # The queue goes to the spool first, in order: taken there, it no longer holds back the
        # acknowledgement of every report spooled after it until the store is back.
        self._tail[:0] = self._queue
        self._tail_records += self._queued_records
        self._queue.clear()
        self._queued_records = 0
        self._spool_wake.set()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._open_spool()
        self._serving = anyio.CancelScope()
        with self._serving:  # cancelled by `stop`, or with the caller
            task_status.started()
            try:
                async with anyio.create_task_group() as tg:
                    if self._spool is not None:
                        tg.start_soon(self._spool_loop)
                    await self._flush_loop()
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._last_flush()
                        await self._persist()
                    finally:
                        self._stopped.set()

    async def stop(self) -> None:
        """End `serve`: the last flush, then what is left in memory to the spool, so that every
        report it holds is taken (or lost, logged); returns once that is done."""
        if self._serving is None:
            return
        self._serving.cancel()
        await self._stopped.wait()

    async def _last_flush(self) -> None:
        """On stop: write what is queued, unless the store is failing (then the spool takes it
        at once: a stop must not wait on a store that is down)."""
        if self._failures and self._spool is not None:
            logger.warning("job log: the store is failing: what is queued goes to the spool")
            return
        await self.flush()

    async def _open_spool(self) -> None:
        """Take up a previous run's spool (before any report is queued: they come after it)."""
        if self._spool is None:
            return
        try:
            replayed = await anyio.to_thread.run_sync(self._spool.open)
        except Exception as exc:  # the job log goes on, in memory only; the files stay
            log_spool_failure(
                logging.ERROR,
                exc,
                "job log: cannot open the spool %s, queueing in memory only: %s",
                self._spool.directory,
            )
            self._spool = None
            return
        if replayed:
            self._start_spooling(replayed)

    async def _flush_loop(self) -> None:
        while True:
            with anyio.move_on_after(JOB_LOG_FLUSH_INTERVAL_S):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self.flush()

    async def _spool_loop(self) -> None:
        """Move the reports taken while spooling to disk, apart from the flushes: a store
        write that hangs must not hold them in memory."""
        while True:
            with anyio.move_on_after(JOB_LOG_FLUSH_INTERVAL_S):
                await self._spool_wake.wait()
            self._spool_wake = anyio.Event()
            await self._spool_tail()

    async def flush(self) -> None:
        """Write what is queued, or the spool's next batch (released once written and its
        purges queued); never raises but on cancellation."""
        if self._loaded and not self._queue and self._read_back.queued():
            await self._release()
        if not self._queue and self._spooling is not None:  # read on past a failed release;
            if not self._loaded or self._read_back.queued():  # asked once the batch is written
                await self._load()  # (`queued` runs the wait's clock: not while the store is down)
        await self._flush_queue()
        if self._loaded and not self._queue and self._read_back.queued():
            await self._release()

    async def _flush_queue(self) -> None:
        if not self._queue:
            return
        batch = list(self._queue)
        self._queue.clear()
        self._writing_records, self._queued_records = self._queued_records, 0
        written = self.written_reports
        try:
            await self._write(batch)
        except Exception as exc:
            if store_unavailable(exc):  # the same batch will do once the database is back
                self._failures += 1
                log_failure(
                    exc, "job log write failed (%s in a row), will retry: %s", self._failures
                )
                await self._hold_back(batch)
                return
            self._failures = 0
            await self._hold_back(await self._write_in_pieces(batch, exc))
            return
        except BaseException:  # cancelled (a stop): unless written, the stop's flush keeps it
            if self.written_reports == written:
                self._requeue(batch)
            raise
        finally:
            self._writing_records = 0
        self._failures = 0

    # --- The spool ---

    async def _spool_tail(self) -> None:
        """Append the reports taken while spooling to the spool, about FLUSH_RECORDS records
        per append (the queue moved there when spooling starts holds up to the memory bound:
        encoded at once it took another 96 MB); on failure (a full disk) they stay in memory,
        in order, and are tried again."""
        owed = self._tail_records  # no more: reports arriving meanwhile wait for the next call,
        while owed > 0 and self._tail:  # or a steady stream would keep the flush from the store
            appended = await self._spool_some()
            if appended is None:
                break
            owed -= appended
        spooling = self._spooling
        if not self._tail and spooling is not None and spooling.failing:
            spooling.failing = False  # said once the whole tail made it: a full disk may take
            logger.warning(  # a small append between failures
                "job log: writing to the spool %s again",
                self._spool.directory if self._spool is not None else "",
            )

    async def _spool_some(self) -> int | None:
        """Append the first reports of the tail; how many records went, None if that failed."""
        assert self._spool is not None
        async with self._spool_lock:
            if not self._tail:
                return 0
            tail, records = first_records(self._tail, FLUSH_RECORDS)
            del self._tail[: len(tail)]
            self._tail_records -= records
            self._appending_records = records
            try:
                with anyio.CancelScope(shield=True):  # on disk or back in memory, never neither
                    await anyio.to_thread.run_sync(self._spool.append, tail)
            except Exception as exc:  # a full disk (OSError) or a bug: keep them, try again
                self._tail[:0] = tail
                self._tail_records += records
                self._spool_failed(exc)
                return None
            finally:
                self._appending_records = 0
            self._receipts.taken(tail, spooled=True)
        if self._spooling is not None:
            self._spooling.spooled += records
        return records

    async def _hold_back(self, batch: list[CommitReport]) -> None:
        """A batch the store did not take goes back in front of the queue; while spooling, in
        front of the spool instead (it is older than all there), so that it is taken and the
        reports spooled after it can be acknowledged. One read back from the spool stays there."""
        spool, spooling = self._spool, self._spooling
        if spool is None or spooling is None or self._loaded or not batch:
            self._requeue(batch)
            return
        # Shielded from the lock on: the batch is nowhere else, and a stop's cancellation (the
        # write failed under it) would otherwise take it at the lock, before either place.
        with anyio.CancelScope(shield=True):
            async with self._spool_lock:
                try:
                    await anyio.to_thread.run_sync(spool.prepend, batch)
                except Exception as exc:  # a full disk (OSError) or a bug: in memory, tried again
                    self._requeue(batch)
                    self._spool_failed(exc)
                    return
                self._receipts.taken(batch, spooled=True)
        spooling.spooled += sum(len(r.records) for r in batch)

    def _spool_failed(self, exc: Exception) -> None:
        assert self._spool is not None and self._spooling is not None
        if not self._spooling.failing:  # once per run of failures: they come every flush
            self._spooling.failing = True
            log_spool_failure(
                logging.ERROR,
                exc,
                "job log: cannot write to the spool %s, keeping its reports in memory "
                "(%s records, over the bound of %s): %s",
                self._spool.directory,
                self.queued_records + self._tail_records,
                self.max_queued_records,
            )

    async def _load(self) -> None:
        """Queue the next batch of the spool (the tail goes there first: while spooling, memory
        holds one batch of it); once it is empty, what could not go to disk."""
        assert self._spool is not None
        await self._spool_tail()
        earlier: list[CommitReport] = []  # spooled by a previous run: its subscribers' work died
        async with self._spool_lock:
            try:
                with anyio.CancelScope(shield=True):
                    batch = await anyio.to_thread.run_sync(self._spool.read, FLUSH_RECORDS, earlier)
            except Exception as exc:  # read errors are the spool's to handle: a bug
                logger.error(
                    "job log: reading the spool failed, will retry: %r", exc, exc_info=True
                )
                return
            if batch:
                self._loaded = True
            elif not self._loaded:  # the disk part is drained: the tail is the oldest left
                batch, self._tail, self._tail_records = self._tail, [], 0
            self._queue.extend(batch)
            self._queued_records += sum(len(r.records) for r in batch)
        for report in earlier:
            self._subscribers.tell(report)
        if batch:
            self._read_back.wait_for(self._subscribers.barrier(), lambda: self._wake.set())
        self._end_spooling_if_drained()

    async def _release(self) -> None:
        """The batch read back is written: the spool forgets it."""
        assert self._spool is not None
        async with self._spool_lock:
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._spool.release)
            except Exception as exc:  # tried again after the next batch; a stop repeats them
                self._release_failures.failed(exc)
                return
            self._release_failures.worked()
            self._loaded = False
        if self._spooling is not None:
            self._wake.set()  # more to write: no pause between batches
        self._end_spooling_if_drained()

    def _end_spooling_if_drained(self) -> None:
        spooling, spool = self._spooling, self._spool
        if spooling is None or spool is None or spool.records or self._tail or self._loaded:
            return
        self._spooling = None
        logger.warning(
            "job log: the spool %s is drained: %s records went through it in %.0f s "
            "(%s from the last run)",
            spool.directory,
            spooling.spooled + spooling.replayed,
            time.monotonic() - spooling.started,
            spooling.replayed,
        )

    async def _persist(self) -> None:
        """On stop: put what is still in memory in the spool, the queue in front (it is older)
        unless it was read back from there, so that the next run writes it."""
        if self._spool is None:
            return
        spool = self._spool
        queue = [] if self._loaded else list(self._queue)
        for save, reports in ((spool.prepend, queue), (spool.append, self._tail)):
            try:
                await anyio.to_thread.run_sync(save, reports)
                self._receipts.taken(reports, spooled=True)
            except Exception as exc:
                log_spool_failure(
                    logging.ERROR,
                    exc,
                    "job log: %s records lost: cannot write them to the spool %s: %s",
                    sum(len(r.records) for r in reports),
                    spool.directory,
                )
        self._queue.clear()
        self._queued_records = 0
        self._tail, self._tail_records = [], 0
        try:
            await anyio.to_thread.run_sync(spool.close)
        except OSError as exc:
            logger.error("job log: closing the spool %s failed: %s", spool.directory, exc)
        if spool.records:
            logger.warning(
                "job log: %s records not yet in the store wait in the spool %s",
                spool.records,
                spool.directory,
            )

    async def _write(self, reports: list[CommitReport]) -> None:
        await anyio.to_thread.run_sync(self.store.record_commit_reports, reports)
        self.written_reports += len(reports)
        # Shielded: written, the reports must be taken (a stop here: sent again); taken once
        # the N:M conflict rows are written too (a kill in between lost those for good).
        with anyio.CancelScope(shield=True):
            if any(rec.conflict for report in reports for rec in report.records):
                await record_conflicts(self.store, self.events, reports)  # never raises
            self._receipts.taken(reports)

    def _requeue(self, reports: Sequence[CommitReport]) -> None:
        self._queue.extendleft(reversed(reports))
        self._queued_records += sum(len(r.records) for r in reports)
