"""REST resource /api/retention: how many days of job-log history and resolved alerts the master
keeps."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel
from relaysync.master.store._retention import MAX_DAYS

Days = Field(
    default=None, ge=0, le=MAX_DAYS, description=f"whole days, 0 = keep forever, at most {MAX_DAYS}"
)


class RetentionIn(InputModel):
    """Fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    changes_days: int | None = Days  # change rows (default 30)
    advances_days: int | None = (
        Days  # watermark advances: per-target commit times, routes, latency (90)
    )
    exceptions_days: int | None = Days  # resolved exceptions; open ones are never pruned (90)
    recovery_jobs_days: int | None = Days  # finished recovery jobs (90)
    alerts_days: int | None = Days  # resolved alerts; firing and acknowledged ones are kept (90)


class RetentionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    changes_days: int
    advances_days: int
    exceptions_days: int
    recovery_jobs_days: int
    alerts_days: int
    updated_at: float | None  # None: never set, the defaults apply
    last_pruned_at: float | None  # the master prunes hourly
    last_pruned: dict[str, int]  # kind -> rows the last prune deleted


def get_retention(context: Context) -> RetentionOut:
    """The days kept of each kind of job-log history and of resolved alerts, and what the last
    prune removed."""
    return RetentionOut.model_validate(context.store.retention.get())


def put_retention(body: RetentionIn, context: Context) -> RetentionOut:
    """Change how many days of some kinds of history are kept; the next prune applies it."""
    days = {
        name.removesuffix("_days"): value
        for name, value in body.model_dump().items()
        if value is not None
    }
    settings = context.store.retention.set(days)
    return RetentionOut.model_validate(settings)
