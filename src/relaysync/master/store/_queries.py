"""Read queries over the job log: watermarks, per-target status, change rows, exceptions, catch-up."""

from __future__ import annotations

import logging

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from relaysync.master.store import _heads
from relaysync.master.store._joblog_changes import CHANGES
from relaysync.master.store._joblog_counts import committed_count, replaced, target_count
from relaysync.master.store._modes import MappingModeRow
from relaysync.master.store.models import (
    Catchup,
    CommitException,
    Mapping,
    Watermark,
    WatermarkAdvance,
)
from relaysync.master.store.types import (
    AdvanceInfo,
    CatchupInfo,
    ChangeLogRow,
    ExceptionInfo,
    MappingInfo,
    TargetStatus,
    WatermarkInfo,
)

logger = logging.getLogger(__name__)

# the job log's cursor past seq: (mapping id, source node) of an older client, or with the journal id
JobLogTie = tuple[int, str] | tuple[int, str, str]


def watermarks(session: Session, mapping_id: int) -> list[WatermarkInfo]:
    """Every (source, target) watermark of a mapping."""
    rows = session.scalars(
        select(Watermark).where(Watermark.mapping_id == mapping_id).order_by(Watermark.target_node)
    )
    return [
        WatermarkInfo(
            mapping_id=r.mapping_id,
            source=r.source_node,
            target=r.target_node,
            seq=r.seq,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


def mapping_status(session: Session, row: Mapping, info: MappingInfo) -> list[TargetStatus]:
    """Per target of the mapping: watermark, the source's highest seq (its own word or the
    targets' reports, the higher), lag, changes held back (pending), open exceptions."""
    highest = _heads.head_seq(session, row.id, row.source_node)
    marks = {
        w.target_node: w
        for w in session.scalars(
            select(Watermark).where(
                Watermark.mapping_id == row.id, Watermark.source_node == row.source_node
            )
        )
    }
    open_counts = {
        target: int(n)
        for target, n in session.execute(
            select(CommitException.target_node, func.count())
            .where(CommitException.mapping_id == row.id, CommitException.resolved_at.is_(None))
            .group_by(CommitException.target_node)
        )
    }
    released = _released_upto(session, row.id)
    return [
        _target_status(
            t.node_id, t.name, t.path, marks.get(t.node_id), (highest, released), open_counts
        )
        for t in info.targets
    ]


def _released_upto(session: Session, mapping_id: int) -> int | None:
    """How far a manual or reserved mapping's releases cover its source's journal (0 before the
    source reports its first); None for a real-time one, which holds nothing back."""
    mode = session.get(MappingModeRow, mapping_id)
    if mode is None or mode.mode == "realtime":
        return None
    return int(mode.released_upto)


def split_lag(highest: int, released: int | None, watermark: int) -> tuple[int, int]:
    """(lag, pending) of a target at `watermark`: lag is what was sent (released) and it has
    not committed; pending what its mapping holds back until the next release (manual or
    reserved; `released` None: real-time, nothing held back). Neither is negative, and they add
    up to highest - watermark (a target past the release, from before the mode changed, has
    only pending)."""
    if released is None:
        return max(0, highest - watermark), 0
    return max(0, min(highest, released) - watermark), max(0, highest - max(released, watermark))


def _target_status(
    node_id: str,
    name: str,
    path: str,
    mark: Watermark | None,
    head: tuple[int, int | None],
    open_counts: dict[str, int],
) -> TargetStatus:
    watermark = mark.seq if mark is not None else 0
    highest, released = head
    lag, pending = split_lag(highest, released, watermark)
    return TargetStatus(
        target=node_id,
        target_name=name,
        path=path,
        watermark=watermark,
        highest_seq=highest,
        lag=lag,
        pending=pending,
        open_exceptions=open_counts.get(node_id, 0),
        updated_at=mark.updated_at if mark is not None else None,
    )


def job_log(
    session: Session,
    *,
    mapping_id: int | None,
    limit: int,
    before_seq: int | None,
    after_tie: JobLogTie | None = None,
) -> list[ChangeLogRow]:
    """Change rows, newest seq first, each with how many targets have committed it (keyset
    paging on (seq desc, mapping id, source node, journal id): see `Store.job_log`)."""
    ch = CHANGES.c
    query = select(
        ch.mapping_id,
        ch.source_node,
        ch.seq,
        ch.journal_id,
        ch.op,
        ch.path,
        ch.size,
        ch.reported_at,
        committed_count(),
        target_count(),
        replaced(),
    )
    if mapping_id is not None:
        query = query.where(ch.mapping_id == mapping_id)
    if before_seq is not None:
        query = query.where(_after(before_seq, after_tie))
    order = (ch.seq.desc(), ch.mapping_id, ch.source_node, ch.journal_id)
    return [
        ChangeLogRow(
            mapping_id=m,
            source_node=s,
            seq=q,
            journal_id=j,
            op=o,
            path=p,
            size=z,
            reported_at=r,
            committed_targets=c,
            total_targets=t,
            replaced=bool(x),
        )
        for m, s, q, j, o, p, z, r, c, t, x in session.execute(query.order_by(*order).limit(limit))
    ]


def _after(before_seq: int, tie: JobLogTie | None) -> ColumnElement[bool]:
    """The rows after the cursor (seq, tie) in the job log's order: below `before_seq`, and of
    that seq those after the tie's (mapping id, source node[, journal id]); with no journal id,
    the rest of that (mapping, source)'s rows at `before_seq` are skipped too (older cursors)."""
    ch = CHANGES.c
    if tie is None:
        return ch.seq < before_seq
    after = or_(ch.mapping_id > tie[0], and_(ch.mapping_id == tie[0], ch.source_node > tie[1]))
    if len(tie) > 2:
        same_source = and_(ch.mapping_id == tie[0], ch.source_node == tie[1])
        after = or_(after, and_(same_source, ch.journal_id > tie[2]))
    return or_(ch.seq < before_seq, and_(ch.seq == before_seq, after))


def exceptions(
    session: Session, *, mapping_id: int | None, limit: int, open_only: bool
) -> list[ExceptionInfo]:
    """Failed changes, latest failure first."""
    query = select(CommitException)
    if mapping_id is not None:
        query = query.where(CommitException.mapping_id == mapping_id)
    if open_only:
        query = query.where(CommitException.resolved_at.is_(None))
    query = query.order_by(CommitException.at.desc(), CommitException.id.desc()).limit(limit)
    return [_exception_info(r) for r in session.scalars(query)]


def _exception_info(row: CommitException) -> ExceptionInfo:
    return ExceptionInfo(
        id=row.id,
        mapping_id=row.mapping_id,
        source_node=row.source_node,
        target_node=row.target_node,
        seq=row.seq,
        path=row.path,
        error=row.error,
        at=row.at,
        attempts=row.attempts,
        resolved_at=row.resolved_at,
        journal_id=row.journal_id,
    )


def catchup(session: Session, mapping_id: int) -> list[CatchupInfo]:
    """The catch-up counters of a mapping, per (source, target)."""
    rows = session.scalars(
        select(Catchup).where(Catchup.mapping_id == mapping_id).order_by(Catchup.target_node)
    )
    return [
        CatchupInfo(
            mapping_id=r.mapping_id,
            source_node=r.source_node,
            target_node=r.target_node,
            files=r.files,
            bytes=r.bytes,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


def advances(
    session: Session, *, mapping_id: int | None, target_node: str | None, limit: int
) -> list[AdvanceInfo]:
    """Watermark advances, newest first, each with the route its changes came through."""
    query = select(WatermarkAdvance)
    if mapping_id is not None:
        query = query.where(WatermarkAdvance.mapping_id == mapping_id)
    if target_node is not None:
        query = query.where(WatermarkAdvance.target_node == target_node)
    query = query.order_by(WatermarkAdvance.id.desc()).limit(limit)
    return [
        AdvanceInfo(
            id=r.id,
            mapping_id=r.mapping_id,
            source_node=r.source_node,
            target_node=r.target_node,
            from_seq=r.from_seq,
            to_seq=r.to_seq,
            at=r.at,
            files=r.files,
            wire_bytes=r.wire_bytes,
            route=r.route,
        )
        for r in session.scalars(query)
    ]
