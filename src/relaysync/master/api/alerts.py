"""REST resource /api/alerts: the alert log (firing, acknowledged, resolved), and acknowledging."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel, PathInt
from relaysync.master.events import EventType

logger = logging.getLogger(__name__)


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    key: str  # threshold:ID:SERVER, probe:ID or heartbeat:SERVER
    server: str
    kind: str  # threshold | probe | heartbeat | no_data
    subject: str  # the metric or the probe's name
    value: float | None
    message: str
    state: str  # firing | acknowledged | resolved
    fired_at: float
    acknowledged_at: float | None
    acknowledged_by: str
    resolved_at: float | None


class AckIn(InputModel):
    by: str = "api"  # who acknowledges it


def list_alerts(
    context: Context,
    state: str | None = None,
    server: str | None = None,
    open: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertOut]:
    """Alerts, newest first; `open` keeps only firing and acknowledged ones."""
    return [
        AlertOut.model_validate(a)
        for a in context.store.monitoring.list_alerts(
            state=state, server=server, open_only=open, limit=limit
        )
    ]


def acknowledge_alert(alert_id: PathInt, context: Context, body: AckIn | None = None) -> AlertOut:
    """Acknowledge an open alert: it stays open (and its server unhealthy) until it resolves,
    but it is marked as seen."""
    by = body.by if body is not None else "api"
    alert = context.store.monitoring.acknowledge_alert(alert_id, by=by, now=time.time())
    context.events.publish(
        EventType.ALERT_ACKNOWLEDGED, alert_id=alert.id, server=alert.server, by=by
    )
    return AlertOut.model_validate(alert)
