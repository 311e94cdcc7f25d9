"""The master's retention task: prunes old job-log history and resolved alerts by the store's
retention settings.

Runs `first_after_s` after start and then every `interval_s`. Each kind is deleted in batches
(one short transaction each, see store/_retention.py) with a pause between batches, so the job-log
writer and the API keep their turn at the store during a big prune.

Error handling: a store failure is logged as a warning and the prune is retried next interval.
"""

from __future__ import annotations

import logging
import time
from typing import NoReturn

import anyio
from anyio.abc import TaskStatus

from relaysync.errors import StoreError
from relaysync.master.store._retention import KINDS, PRUNE_BATCH_ROWS
from relaysync.master.store.store import Store

logger = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 3600.0  # history ages by days: hourly keeps it within an hour of its limit
FIRST_PRUNE_AFTER_S = 60.0  # not on the start path: agents reconnect first
BATCH_PAUSE_S = 0.05  # between batches: the other writers take the store's lock meanwhile


class RetentionPruner:
    """Owns no resources; `serve` runs until cancelled."""

    def __init__(
        self,
        store: Store,
        *,
        interval_s: float = PRUNE_INTERVAL_S,
        first_after_s: float = FIRST_PRUNE_AFTER_S,
        batch_rows: int = PRUNE_BATCH_ROWS,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.first_after_s = first_after_s
        self.batch_rows = batch_rows
        self.runs = 0  # prunes completed, to observe the task

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        task_status.started()
        await anyio.sleep(self.first_after_s)
        while True:
            try:
                await self.prune(time.time())
            except StoreError as exc:
                logger.warning("retention prune failed, will retry: %s", exc)
            await anyio.sleep(self.interval_s)

    async def prune(self, now: float) -> dict[str, int]:
        """Delete what the settings say is too old, batch by batch; return rows deleted per kind."""
        settings = await anyio.to_thread.run_sync(self.store.retention.get)
        deleted = dict.fromkeys(KINDS, 0)
        for kind, cutoff in settings.cutoffs(now).items():
            while True:
                n = await anyio.to_thread.run_sync(
                    self.store.retention.prune_batch, kind, cutoff, self.batch_rows
                )
                deleted[kind] += n
                if n < self.batch_rows:
                    break
                await anyio.sleep(BATCH_PAUSE_S)
        await anyio.to_thread.run_sync(self.store.retention.record_prune, now, deleted)
        self.runs += 1
        logger.info(
            "retention prune: changes=%s advances=%s exceptions=%s recovery_jobs=%s alerts=%s"
            " rows deleted",
            deleted["changes"],
            deleted["advances"],
            deleted["exceptions"],
            deleted["recovery_jobs"],
            deleted["alerts"],
        )
        return deleted
