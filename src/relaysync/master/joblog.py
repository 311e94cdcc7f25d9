"""The job log writer: commit reports are queued at once and written to the store in batches.

A burst of 10,000 changes never waits on the store: `add` only appends to a queue; a task
flushes it every JOB_LOG_FLUSH_INTERVAL_S (or sooner when it grows) in one transaction, in a
worker thread. Failed records also go to the event bus. Live watermarks are kept in memory for
the API (lag figures) as reports arrive.

Error handling: a batch that fails goes back in front of the queue and is retried with the next
flush; after MAX_BATCH_ATTEMPTS failures in a row it is written in pieces (halves, down to single
reports, then single records), so that a record the store refuses for what it holds is dropped
alone, with an error naming it, and every other agent's commits are written. The store itself
failing (down, locked, disk full: `store_unavailable`) drops nothing: what is left is retried as
it is. Any exception counts as a failure (a bug is logged with its traceback): the writer's task
never ends but by cancellation, which would end the master's task group with it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import msgspec

from relaysync.constants import JOB_LOG_FLUSH_INTERVAL_S
from relaysync.errors import StoreError
from relaysync.master.events import EventBus, EventType
from relaysync.master.store import store_unavailable
from relaysync.master.store.store import Store
from relaysync.protocol.messages import CommitReport

logger = logging.getLogger(__name__)

FLUSH_RECORDS = 5_000  # flush early when this many records are waiting
# Flushes in a row a batch may fail (JOB_LOG_FLUSH_INTERVAL_S apart) before it is written in
# pieces: a lock or a restart of the database passes within them, a value it refuses does not.
MAX_BATCH_ATTEMPTS = 3


class JobLogWriter:
    def __init__(self, store: Store, events: EventBus) -> None:
        self.store = store
        self.events = events
        self._queue: deque[CommitReport] = deque()
        self._queued_records = 0
        self._wake = anyio.Event()
        self.watermarks: dict[tuple[int, str, str], int] = {}
        self.written_reports = 0
        self.dropped_records = 0  # refused by the store for what they hold (logged as errors)
        self._failures = 0  # flushes in a row the batch at the head of the queue failed
        self._subscribers: list[Callable[[CommitReport], None]] = []

    def subscribe(self, callback: Callable[[CommitReport], None]) -> None:
        """Call `callback(report)` with every commit report as it arrives (on the loop's thread;
        it must not block: the purger needs commits within milliseconds, not per flush)."""
        self._subscribers.append(callback)

    def add(self, report: CommitReport) -> None:
        key = (report.mapping_id, report.source_node, report.target_node)
        if report.watermark > self.watermarks.get(key, 0):
            self.watermarks[key] = report.watermark
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
        for callback in self._subscribers:
            try:
                callback(report)
            except Exception:  # a subscriber's bug must not lose the job log
                logger.exception("commit report subscriber failed")
        self._queue.append(report)
        self._queued_records += len(report.records)
        if self._queued_records >= FLUSH_RECORDS:
            self._wake.set()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            while True:
                with anyio.move_on_after(JOB_LOG_FLUSH_INTERVAL_S):
                    await self._wake.wait()
                self._wake = anyio.Event()
                await self.flush()
        finally:
            with anyio.CancelScope(shield=True):
                await self.flush()

    async def flush(self) -> None:
        """Write what is queued; never raises but on cancellation (see the module's docstring)."""
        if not self._queue:
            return
        batch = list(self._queue)
        self._queue.clear()
        self._queued_records = 0
        try:
            await self._write(batch)
        except Exception as exc:
            self._failures += 1
            if self._failures < MAX_BATCH_ATTEMPTS or store_unavailable(exc):
                _log_failure(
                    exc, "job log write failed (%s in a row), will retry: %s", self._failures
                )
                self._requeue(batch)
                return
            self._failures = 0
            self._requeue(await self._write_in_pieces(batch, exc))
            return
        self._failures = 0

    async def _write(self, reports: list[CommitReport]) -> None:
        await anyio.to_thread.run_sync(self.store.record_commit_reports, reports)
        self.written_reports += len(reports)
        if any(rec.conflict for report in reports for rec in report.records):
            await self._record_conflicts(reports)

    def _requeue(self, reports: Sequence[CommitReport]) -> None:
        self._queue.extendleft(reversed(reports))
        self._queued_records += sum(len(r.records) for r in reports)

    async def _write_in_pieces(
        self, batch: list[CommitReport], exc: Exception
    ) -> list[CommitReport]:
        """Write a batch that keeps failing (with `exc`) in ever smaller pieces, dropping each
        record that fails alone; returns what is left when the store itself fails meanwhile."""
        logger.warning(
            "job log batch of %s reports keeps failing: writing it in pieces", len(batch)
        )
        pending: list[list[CommitReport]] = []  # a stack, the first piece on top: order is kept
        self._split_or_drop(batch, exc, pending)
        while pending:
            piece = pending.pop()
            try:
                await self._write(piece)
            except Exception as failure:
                if store_unavailable(failure):
                    _log_failure(failure, "job log write failed, will retry: %s")
                    return [r for p in (piece, *reversed(pending)) for r in p]
                self._split_or_drop(piece, failure, pending)
        return []

    def _split_or_drop(
        self, piece: list[CommitReport], exc: Exception, pending: list[list[CommitReport]]
    ) -> None:
        halves = _halves(piece)
        if halves is None:
            self._drop(piece[0], exc)
        else:
            pending.extend(reversed(halves))

    def _drop(self, report: CommitReport, exc: Exception) -> None:
        """Give up on a report of at most one record: the store refuses what it holds."""
        self.dropped_records += len(report.records)
        rec = report.records[0] if report.records else None
        logger.error(
            "job log: dropped a commit record the store refuses: mapping %s, source %s, "
            "target %s, seq %s, path %r, watermark %s: %s",
            report.mapping_id,
            report.source_node[:16],
            report.target_node[:16],
            rec.seq if rec else "-",
            rec.path if rec else "",
            report.watermark,
            exc if isinstance(exc, StoreError) else repr(exc),
            exc_info=not isinstance(exc, StoreError),
        )

    async def _record_conflicts(self, batch: list[CommitReport]) -> None:
        """Keep the N:M jobs' conflicts with their job and publish each (after the job log write)."""
        try:
            conflicts = await anyio.to_thread.run_sync(self.store.nm_jobs.record_conflicts, batch)
        except Exception as exc:  # the change rows are written; only the conflict list misses these
            _log_failure(exc, "conflict log write failed: %s")
            return
        for c in conflicts:
            self.events.publish(
                EventType.CONFLICT,
                job=c.job,
                job_id=c.job_id,
                mapping_id=c.mapping_id,
                target=c.target_node,
                path=c.path,
                op=c.op,
                reason=c.reason,
                winner=c.winner_node,
                loser=c.loser_node,
            )


def _log_failure(exc: Exception, message: str, *args: object) -> None:
    """A store failure as a warning; anything else (a bug) with its traceback."""
    expected = isinstance(exc, StoreError)
    logger.warning(message, *args, exc if expected else repr(exc), exc_info=not expected)


def _halves(piece: list[CommitReport]) -> list[list[CommitReport]] | None:
    """A piece split in two: its reports, or a lone report's records; None: a single record.

    Each half of a report carries its watermark: writing it again changes nothing."""
    if len(piece) > 1:
        middle = len(piece) // 2
        return [piece[:middle], piece[middle:]]
    (report,) = piece
    if len(report.records) <= 1:
        return None
    middle = len(report.records) // 2
    return [
        [msgspec.structs.replace(report, records=report.records[:middle])],
        [msgspec.structs.replace(report, records=report.records[middle:])],
    ]
