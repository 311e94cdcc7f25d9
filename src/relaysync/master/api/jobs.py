"""REST resources /api/jobs and /api/exceptions: the job log of changes and the failures among them."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict

from relaysync.errors import ConfigError
from relaysync.master.api._context import Context
from relaysync.master.api._limits import INT64_MAX, INT64_MIN

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
    journal_id: str  # the source journal its seq counts in ("": not named)
    replaced: bool  # its journal was replaced by a new one (the source's state was recreated)


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
    journal_id: str  # the source journal its seq counts in ("": not named)


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
# The job log's cursor: the last row's "SEQ:MAPPING_ID:SOURCE_NODE:JOURNAL_ID" (a journal id of
# "" ends in ":"; without it, the rest of that seq's rows of that source are skipped; a bare SEQ:
# the rows of lower seqs only, skipping the rest of that seq's rows in other mappings or sources).
Cursor = Annotated[
    str | None,
    Query(
        max_length=200,
        pattern=r"^-?[0-9]{1,19}(:[0-9]{1,19}:[0-9a-f]{1,64}(:.{0,64})?)?$",
    ),
]


def _cursor(
    before: str | None,
) -> tuple[int | None, tuple[int, str] | tuple[int, str, str] | None]:
    """(seq, (mapping id, source node[, journal id]) or None) of a job-log cursor.

    Raises:
        ConfigError: a number out of the 64-bit range (no row has one).
    """
    if before is None:
        return None, None
    seq, _, rest = before.partition(":")
    mapping, _, source = rest.partition(":")
    source, journal_named, journal = source.partition(":")
    numbers = [int(seq)] + ([int(mapping)] if rest else [])
    if not all(INT64_MIN <= n <= INT64_MAX for n in numbers):
        raise ConfigError(f"before: {before!r} is out of range")
    if not rest:
        return numbers[0], None
    return numbers[0], ((numbers[1], source, journal) if journal_named else (numbers[1], source))


def list_jobs(
    context: Context,
    mapping: str | None = None,
    limit: Limit = 100,
    before: Cursor = None,
) -> list[ChangeOut]:
    """Changes, newest seq first (then by mapping id and source), with how many targets have
    committed each; page on with ?before=SEQ:MAPPING_ID:SOURCE_NODE:JOURNAL_ID of the last row."""
    seq, tie = _cursor(before)
    rows = context.store.job_log(mapping_id=mapping, limit=limit, before_seq=seq, after_tie=tie)
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
