"""Failed targets and recovery jobs in the store (mixed into RoutingStore).

A failed target is durable (`routing_targets.failed_at`), so a restarted master keeps leaving it
out. Each recovery is a row in `recovery_jobs` (the job log of recoveries) with its outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from relaysync.master.store._routing_tables import RecoveryJobRow, RoutingTargetRow
from relaysync.master.store.models import Mapping as MappingRow
from relaysync.master.store.models import Watermark

SessionFactory = Callable[[str], AbstractContextManager[Session]]


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedTarget:
    mapping_id: int
    node_id: str
    failed_at: float
    reason: str
    next_recovery_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryJob:
    id: int
    mapping_id: int
    target_node: str
    trigger: str
    started_at: float
    from_seq: int
    goal_seq: int
    finished_at: float | None
    outcome: str
    detail: str


def _pairs(session: Session, query: Any) -> dict[Any, Any]:
    """The rows of a two-column query as a dict."""
    return {key: value for key, value in session.execute(query)}


def _job(row: RecoveryJobRow) -> RecoveryJob:
    return RecoveryJob(
        id=row.id,
        mapping_id=row.mapping_id,
        target_node=row.target_node,
        trigger=row.trigger,
        started_at=row.started_at,
        from_seq=row.from_seq,
        goal_seq=row.goal_seq,
        finished_at=row.finished_at,
        outcome=row.outcome,
        detail=row.detail,
    )


class RecoveryStore:
    """Store methods for failed targets and recovery jobs (mixed into RoutingStore)."""

    _read: SessionFactory
    _write: SessionFactory
    _bump_epoch: Callable[[Session], None]

    def _target_row(self, session: Session, mapping_id: int, node_id: str) -> RoutingTargetRow:
        row = session.get(RoutingTargetRow, (mapping_id, node_id))
        if row is None:
            row = RoutingTargetRow(
                mapping_id=mapping_id, node_id=node_id, policy="", schedule="", reason=""
            )
            session.add(row)
        return row

    # --- Failed targets ---

    def failed(self) -> list[FailedTarget]:
        """Every failed target of every mapping (the router rebuilds its state from these)."""
        with self._read("failed targets") as session:
            rows = session.scalars(
                select(RoutingTargetRow)
                .where(RoutingTargetRow.failed_at.is_not(None))
                .order_by(RoutingTargetRow.mapping_id, RoutingTargetRow.node_id)
            )
            return [
                FailedTarget(
                    mapping_id=r.mapping_id,
                    node_id=r.node_id,
                    failed_at=r.failed_at or 0.0,
                    reason=r.reason,
                    next_recovery_at=r.next_recovery_at,
                )
                for r in rows
            ]

    def mark_failed(self, mapping_id: int, node_id: str, at: float, reason: str) -> bool:
        """Mark a target failed (durably) and end its running recovery as failed; False if it was already."""
        with self._write("mark target failed") as session:
            if session.get(MappingRow, mapping_id) is None:
                return False
            row = self._target_row(session, mapping_id, node_id)
            if row.failed_at is not None:
                return False
            row.failed_at, row.reason, row.next_recovery_at = at, reason, None
            for job in session.scalars(
                select(RecoveryJobRow).where(
                    RecoveryJobRow.mapping_id == mapping_id,
                    RecoveryJobRow.target_node == node_id,
                    RecoveryJobRow.outcome == "running",
                )
            ):
                job.outcome, job.finished_at, job.detail = "failed", at, reason
            self._bump_epoch(session)
            return True

    def set_next_recovery(self, mapping_id: int, node_id: str, at: float | None) -> None:
        with self._write("set next recovery") as session:
            row = session.get(RoutingTargetRow, (mapping_id, node_id))
            if row is not None:
                row.next_recovery_at = at

    # --- Recovery jobs ---

    def start_recovery(self, mapping_id: int, node_id: str, trigger: str, at: float) -> RecoveryJob:
        """Put a failed target back (it is no longer failed) and open its recovery job.

        The job's goal is the best watermark among the other targets: the recovery is done when
        the returning target's watermark reaches it.
        """
        with self._write("start recovery") as session:
            row = session.get(RoutingTargetRow, (mapping_id, node_id))
            if row is not None:
                row.failed_at, row.next_recovery_at = None, None
            marks: dict[str, int] = _pairs(
                session,
                select(Watermark.target_node, Watermark.seq).where(
                    Watermark.mapping_id == mapping_id,
                    Watermark.source_node
                    == select(MappingRow.source_node)
                    .where(MappingRow.id == mapping_id)
                    .scalar_subquery(),
                ),
            )
            own = marks.pop(node_id, 0)
            job = RecoveryJobRow(
                mapping_id=mapping_id,
                target_node=node_id,
                trigger=trigger,
                started_at=at,
                from_seq=own,
                goal_seq=max(marks.values(), default=0),
                outcome="running",
                detail="",
            )
            session.add(job)
            self._bump_epoch(session)
            session.flush()
            return _job(job)

    def finish_recovery(self, job_id: int, outcome: str, at: float, detail: str = "") -> None:
        with self._write("finish recovery") as session:
            job = session.get(RecoveryJobRow, job_id)
            if job is not None and job.outcome == "running":
                job.outcome, job.finished_at, job.detail = outcome, at, detail

    def running_recoveries(self) -> list[RecoveryJob]:
        with self._read("running recoveries") as session:
            return [
                _job(r)
                for r in session.scalars(
                    select(RecoveryJobRow)
                    .where(RecoveryJobRow.outcome == "running")
                    .order_by(RecoveryJobRow.id)
                )
            ]

    def recoveries(self, mapping_id: int, limit: int = 100) -> list[RecoveryJob]:
        """A mapping's recovery jobs, newest first."""
        with self._read("recoveries") as session:
            return [
                _job(r)
                for r in session.scalars(
                    select(RecoveryJobRow)
                    .where(RecoveryJobRow.mapping_id == mapping_id)
                    .order_by(RecoveryJobRow.id.desc())
                    .limit(limit)
                )
            ]
