"""REST resource /api/events: the event bus, read by id with a bounded long-poll."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel

from relaysync.master.api._context import Context
from relaysync.master.api._limits import INT64_MAX

logger = logging.getLogger(__name__)

MAX_POLL_S = 60.0  # inside common proxy idle timeouts; clients poll again


class EventOut(BaseModel):
    id: int
    type: str
    time: float
    data: dict[str, Any]


async def list_events(
    context: Context,
    since: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    timeout_s: Annotated[float, Query(ge=0, le=MAX_POLL_S)] = 0.0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[EventOut]:
    """Events with an id above `since`; waits up to `timeout_s` for one if there are none yet."""
    events = await context.events.wait_since(since, timeout_s, limit)
    return [EventOut(**e.to_dict()) for e in events]
