"""The master's cache synchronization: the purger fed from the job log, and the listener.

Resource handling: both run in serve()'s task group and stop with it.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.abc import TaskStatus

from relaysync.config.load import split_address
from relaysync.master.events import EventBus, EventType
from relaysync.master.joblog import JobLogWriter
from relaysync.master.store.store import Store
from relaysync.purge.listener import PurgeListener
from relaysync.purge.purger import Purger

logger = logging.getLogger(__name__)


class PurgeService:
    """Owns the purger and, when `listen` is host:port, the purge listener."""

    def __init__(
        self, *, store: Store, events: EventBus, joblog: JobLogWriter, listen: str
    ) -> None:
        self.events = events
        self.purger = Purger(store, notify=self._notify)
        joblog.subscribe(self.purger.on_commit_report, barrier=self.purger.barrier)
        self.listener: PurgeListener | None = None
        if listen:
            host, port = split_address(listen)
            self.listener = PurgeListener(
                host=host, port=port, purger=self.purger, sites=self.purger.site_by_name
            )
        self.address = ""  # host:port of the listener once it listens

    def _notify(self, kind: str, data: dict[str, Any]) -> None:
        self.events.publish(EventType(kind), **data)

    async def serve(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.purger.serve)
            if self.listener is not None:
                port = await tg.start(self.listener.serve)
                self.address = f"{self.listener.host}:{port}"
            task_status.started(self.address)
