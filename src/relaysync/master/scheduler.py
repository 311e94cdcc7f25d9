"""The master's scheduler: releases reserved mappings when their schedule is due.

Schedules are durable (in the store, with the next run time); a run missed while the master was
down happens once at start. Every release bumps the config epoch, so the source agent hears of
it with its next assignment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

from relaysync.errors import StoreError
from relaysync.master.events import EventBus, EventType
from relaysync.master.store.store import Store

logger = logging.getLogger(__name__)

TICK_S = 0.5  # schedules are checked this often: a run starts within half a second of its time


class Scheduler:
    def __init__(self, store: Store, events: EventBus, on_change: Callable[[], None]) -> None:
        self.store = store
        self.events = events
        self.on_change = on_change

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            try:
                due = await anyio.to_thread.run_sync(self.store.modes.run_due, time.time())
            except StoreError as exc:
                logger.warning("scheduler: store unavailable, will retry: %s", exc)
                due = []
            for mapping_id in due:
                logger.info("reserved run of mapping %s", mapping_id)
                self.events.publish(
                    EventType.MAPPING_CHANGED, mapping_id=mapping_id, release="reserved"
                )
            if due:
                self.on_change()
            await anyio.sleep(TICK_S)
