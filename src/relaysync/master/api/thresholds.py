"""REST resource /api/thresholds: alert rules on servers' figures, per server, per group or for all."""

from __future__ import annotations

import logging

from pydantic import ConfigDict, Field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel, PathInt

logger = logging.getLogger(__name__)


class ThresholdIn(InputModel):
    scope: str = "all"  # server | group | all
    target: str = ""  # the server (or "master") or group name
    metric: str  # e.g. cpu_percent, memory_percent, disk_used_percent, journal_backlog
    operator: str = ">"  # > >= < <= == !=
    value: float
    for_s: float = Field(0.0, ge=0)  # the condition must hold this long to fire
    hysteresis: float = Field(0.0, ge=0)  # resolve only once this far back past the value
    enabled: bool = True


class ThresholdOut(ThresholdIn):
    model_config = ConfigDict(from_attributes=True, allow_inf_nan=True)

    id: int
    created_at: float


def list_thresholds(context: Context) -> list[ThresholdOut]:
    """Every threshold, by id."""
    return [ThresholdOut.model_validate(t) for t in context.store.monitoring.list_thresholds()]


def create_threshold(body: ThresholdIn, context: Context) -> ThresholdOut:
    """Add a threshold; it is checked from the monitor's next tick on."""
    return ThresholdOut.model_validate(
        context.store.monitoring.create_threshold(**body.model_dump())
    )


def delete_threshold(threshold_id: PathInt, context: Context) -> None:
    """Remove a threshold; its open alerts resolve at the next tick."""
    context.store.monitoring.delete_threshold(threshold_id)
