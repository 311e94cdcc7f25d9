"""Job-log row figures: how many targets have committed a change row, and whether its journal
was replaced.

A change row counts in the source journal it was reported in (_joblog_changes.py), a watermark
in the one its target last reported (_journals.py): a watermark covers a row only in the same
journal ("" matches any), or a watermark of the new journal at seq 8 would count as committed
the old journal's change 8, another file; and an open failure holds back only a row of its own
journal (the same match), or the old journal's failure of seq 8 would count against the new
journal's change 8 until the head switches (`retire` then closes it), and the other way round.
The rows of a journal a new one replaced stay in the log as history (`replaced`): their
watermarks were voided, so no target counts them, and nothing more of them will commit. A row of none named (an older target's, or from before 0026) counts as
a replaced journal's if it was reported before the head's journal was first heard, that journal
having replaced another (`_unnamed_replaced`): before, the old journal's rows of none named
matched the new journal's watermarks, and showed as committed (or pending for good) beside it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, func, or_, select

from relaysync.master.store._joblog_changes import CHANGES
from relaysync.master.store.models import Base

WATERMARKS: Table = Base.metadata.tables["watermarks"]
EXCEPTIONS: Table = Base.metadata.tables["exceptions"]
TARGETS: Table = Base.metadata.tables["mapping_targets"]
RETIRED: Table = Base.metadata.tables["retired_journals"]
HEADS: Table = Base.metadata.tables["source_heads"]


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
            # another journal's failure of that seq is not this change's ("" matches any)
            or_(exc.journal_id == ch.journal_id, exc.journal_id == "", ch.journal_id == ""),
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
            ~_unnamed_replaced(),
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
    """Correlated: the outer `changes` row's journal was replaced by a new one (one of none
    named: see `_unnamed_replaced`)."""
    r, ch = RETIRED.c, CHANGES.c
    named = (
        select(r.journal_id)
        .where(
            r.mapping_id == ch.mapping_id,
            r.source_node == ch.source_node,
            r.journal_id == ch.journal_id,
        )
        .correlate(CHANGES)
        .exists()
    )
    return or_(named, _unnamed_replaced())


def _unnamed_replaced() -> Any:
    """Correlated: the outer `changes` row names no journal and was reported before the head's
    journal, one that replaced another, was first heard (`journal_since`): an older journal's.
    Rows of none named reported since are the head journal's (_joblog_changes.py)."""
    h, r, ch = HEADS.c, RETIRED.c, CHANGES.c
    replaced_another = (
        select(r.journal_id)
        .where(
            r.mapping_id == ch.mapping_id,
            r.source_node == ch.source_node,
            r.journal_id != h.journal_id,
        )
        .correlate(CHANGES, HEADS)
        .exists()
    )
    head_since_later = (
        select(h.journal_id)
        .where(
            h.mapping_id == ch.mapping_id,
            h.source_node == ch.source_node,
            h.journal_id != "",
            h.journal_since > ch.reported_at,
            replaced_another,
        )
        .correlate(CHANGES)
        .exists()
    )
    return and_(ch.journal_id == "", head_since_later)
