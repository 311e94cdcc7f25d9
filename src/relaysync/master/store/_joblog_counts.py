"""Job-log row figures: how many targets have committed a change row, and whether its journal
was replaced.

A change row counts in the source journal it was reported in (_joblog_changes.py), a watermark
in the one its target last reported (_journals.py): a watermark covers a row only in the same
journal ("" matches any), or a watermark of the new journal at seq 8 would count as committed
the old journal's change 8, another file. The rows of a journal a new one replaced stay in the
log as history (`replaced`): their watermarks were voided, so no target counts them, and nothing
more of them will commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func, or_, select

from relaysync.master.store._joblog_changes import CHANGES
from relaysync.master.store.models import Base

WATERMARKS: Table = Base.metadata.tables["watermarks"]
EXCEPTIONS: Table = Base.metadata.tables["exceptions"]
TARGETS: Table = Base.metadata.tables["mapping_targets"]
RETIRED: Table = Base.metadata.tables["retired_journals"]


def committed_count() -> Any:
    """Correlated scalar: how many current targets have committed the outer `changes` row."""
    wm, exc, tg, ch = WATERMARKS.c, EXCEPTIONS.c, TARGETS.c, CHANGES.c
    open_exception = (
        select(exc.id)
        .where(
            exc.mapping_id == ch.mapping_id,
            exc.source_node == ch.source_node,
            exc.target_node == wm.target_node,
            exc.seq == ch.seq,
            exc.resolved_at.is_(None),
        )
        .correlate(CHANGES, WATERMARKS)
        .exists()
    )
    current_target = (
        select(tg.node_id)
        .where(tg.mapping_id == ch.mapping_id, tg.node_id == wm.target_node)
        .correlate(CHANGES, WATERMARKS)
        .exists()
    )
    return (
        select(func.count())
        .select_from(WATERMARKS)
        .where(
            wm.mapping_id == ch.mapping_id,
            wm.source_node == ch.source_node,
            wm.seq >= ch.seq,
            or_(wm.journal_id == ch.journal_id, wm.journal_id == "", ch.journal_id == ""),
            current_target,
            ~open_exception,
        )
        .correlate(CHANGES)
        .scalar_subquery()
    )


def target_count() -> Any:
    """Correlated scalar: how many targets the outer `changes` row's mapping has."""
    tg, ch = TARGETS.c, CHANGES.c
    return (
        select(func.count())
        .select_from(TARGETS)
        .where(tg.mapping_id == ch.mapping_id)
        .correlate(CHANGES)
        .scalar_subquery()
    )


def replaced() -> Any:
    """Correlated EXISTS: the outer `changes` row's journal was replaced by a new one (one of
    none named never is)."""
    r, ch = RETIRED.c, CHANGES.c
    return (
        select(r.journal_id)
        .where(
            r.mapping_id == ch.mapping_id,
            r.source_node == ch.source_node,
            r.journal_id == ch.journal_id,
        )
        .correlate(CHANGES)
        .exists()
    )
