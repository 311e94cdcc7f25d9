"""REST resources /api/jobs and /api/exceptions: the job log of changes and the failures among them."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict

from relaysync.master.api._context import Context
from relaysync.master.api._limits import QueryInt

logger = logging.getLogger(__name__)

MAX_PAGE = 1000  # rows per request; page on with ?before=


class ChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    mapping_id: int
    source_node: str
    seq: int
    op: str
    path: str
    size: int
    reported_at: float
    committed_targets: int
    total_targets: int


class ExceptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    mapping_id: int
    source_node: str
    target_node: str
    seq: int
    path: str
    error: str
    at: float
    attempts: int
    resolved_at: float | None


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


def list_jobs(
    context: Context,
    mapping: str | None = None,
    limit: Limit = 100,
    before: QueryInt = None,
) -> list[ChangeOut]:
    """Changes, newest seq first, with how many targets have committed each."""
    rows = context.store.job_log(mapping_id=mapping, limit=limit, before_seq=before)
    return [ChangeOut.model_validate(r) for r in rows]


def list_exceptions(
    context: Context,
    mapping: str | None = None,
    limit: Limit = 100,
    open: bool = False,
) -> list[ExceptionOut]:
    """Failed changes, latest failure first; `open=true` for the unresolved only."""
    rows = context.store.exceptions(mapping, limit, open_only=open)
    return [ExceptionOut.model_validate(r) for r in rows]


class AdvanceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    mapping_id: int
    source_node: str
    target_node: str
    from_seq: int
    to_seq: int
    at: float
    files: int
    wire_bytes: int
    route: str  # server names the changes came through, source first, the target last ("" unknown)


def list_advances(
    context: Context,
    mapping: str | None = None,
    target: str | None = None,
    limit: Limit = 100,
) -> list[AdvanceOut]:
    """Watermark advances (per-target commits), newest first, with the route they came along."""
    rows = context.store.advances(mapping_id=mapping, target=target, limit=limit)
    return [AdvanceOut.model_validate(r) for r in rows]
