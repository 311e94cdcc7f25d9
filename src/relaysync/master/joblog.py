"""The job log writer: commit reports are queued at once and written to the store in batches.

A burst of 10,000 changes never waits on the store: `add` only appends to a queue; a task
flushes it every JOB_LOG_FLUSH_INTERVAL_S (or sooner when it grows) in one transaction, in a
worker thread. Failed records also go to the event bus. Live watermarks are kept in memory for
the API (lag figures) as reports arrive.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import anyio

from relaysync.constants import JOB_LOG_FLUSH_INTERVAL_S
from relaysync.errors import StoreError
from relaysync.master.events import EventBus, EventType
from relaysync.master.store.store import Store
from relaysync.protocol.messages import CommitReport

logger = logging.getLogger(__name__)

FLUSH_RECORDS = 5_000  # flush early when this many records are waiting


class JobLogWriter:
    def __init__(self, store: Store, events: EventBus) -> None:
        self.store = store
        self.events = events
        self._queue: deque[CommitReport] = deque()
        self._queued_records = 0
        self._wake = anyio.Event()
        self.watermarks: dict[tuple[int, str, str], int] = {}
        self.written_reports = 0
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
        if not self._queue:
            return
        batch = list(self._queue)
        self._queue.clear()
        self._queued_records = 0
        try:
            await anyio.to_thread.run_sync(self.store.record_commit_reports, batch)
        except StoreError as exc:
            logger.warning("job log write failed, will retry: %s", exc)
            self._queue.extendleft(reversed(batch))
            return
        self.written_reports += len(batch)
        if any(rec.conflict for report in batch for rec in report.records):
            await self._record_conflicts(batch)

    async def _record_conflicts(self, batch: list[CommitReport]) -> None:
        """Keep the N:M jobs' conflicts with their job and publish each (after the job log write)."""
        try:
            conflicts = await anyio.to_thread.run_sync(self.store.nm_jobs.record_conflicts, batch)
        except (
            StoreError
        ) as exc:  # the change rows are written; only the conflict list misses these
            logger.warning("conflict log write failed: %s", exc)
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
