"""Job-log retention: how many days of each kind of history the master keeps, and the pruning.

Five kinds of rows are pruned by age: change rows (`changes.reported_at`), watermark advances
(`watermark_advances.at`), resolved exceptions (`exceptions.resolved_at`), finished recovery
jobs (`recovery_jobs.finished_at`) and resolved alerts (`alerts.resolved_at`, the monitor's alert
log). Never pruned: open exceptions, running recovery jobs, open (firing or acknowledged) alerts,
watermarks (the current state, not history), and the newest change row of each (mapping,
source), which is where a mapping's highest seq (its lag) comes from. Metric samples are not here:
the monitor already folds raw figures into one-minute averages and drops old averages
(`metrics_raw_retention_s`, `metrics_minute_retention_s` in the master's configuration).

Deletes go in batches of `batch_rows`, one transaction each, so that a big first prune never
holds the store's write lock for long; the joblog writer gets in between batches.

Error handling: bad settings raise ConfigError and change nothing; database failures raise StoreError.
Resource handling: every method runs one transaction (prune: one per batch) from the Store's factories.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Float, Integer, Table, delete, func, select, tuple_
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

from relaysync.errors import ConfigError
from relaysync.master.store._joblog import ADVANCES, EXCEPTIONS
from relaysync.master.store._joblog_changes import CHANGES
from relaysync.master.store._routing_tables import RecoveryJobRow
from relaysync.master.store.models import AlertRow, Base

SessionFn = Callable[[str], AbstractContextManager[Session]]
DAY_S = 86_400
MAX_DAYS = 36_500  # a hundred years: anything longer is "keep forever", which is 0
PRUNE_BATCH_ROWS = 5_000  # rows deleted per transaction
# kind -> days kept by default; 0 means keep forever
DEFAULT_DAYS: dict[str, int] = {
    "changes": 30,
    "advances": 90,
    "exceptions": 90,
    "recovery_jobs": 90,
    "alerts": 90,  # resolved alerts: a quarter of incidents to look back on, as exceptions
}
KINDS = tuple(DEFAULT_DAYS)
RECOVERY_JOBS: Table = RecoveryJobRow.__table__  # type: ignore[assignment]
ALERTS: Table = AlertRow.__table__  # type: ignore[assignment]


class RetentionRow(Base):
    """The one row (id 1) of retention settings and the outcome of the last prune."""

    __tablename__ = "retention"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    changes_days: Mapped[int] = mapped_column(Integer, default=DEFAULT_DAYS["changes"])
    advances_days: Mapped[int] = mapped_column(Integer, default=DEFAULT_DAYS["advances"])
    exceptions_days: Mapped[int] = mapped_column(Integer, default=DEFAULT_DAYS["exceptions"])
    recovery_jobs_days: Mapped[int] = mapped_column(Integer, default=DEFAULT_DAYS["recovery_jobs"])
    alerts_days: Mapped[int] = mapped_column(Integer, default=DEFAULT_DAYS["alerts"])  # 0025
    updated_at: Mapped[float] = mapped_column(Float)
    last_pruned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_pruned: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)  # kind -> rows deleted


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionSettings:
    """Days kept per kind (0 = forever), and what the last prune removed."""

    changes_days: int
    advances_days: int
    exceptions_days: int  # resolved exceptions only; open ones are kept however old
    recovery_jobs_days: int  # finished recovery jobs only
    alerts_days: int  # resolved alerts only; firing and acknowledged ones are kept however old
    updated_at: float | None
    last_pruned_at: float | None
    last_pruned: dict[str, int]

    def days(self, kind: str) -> int:
        return int(getattr(self, f"{kind}_days"))

    def cutoffs(self, now: float) -> dict[str, float]:
        """Per kind with a limit: rows older than this unix time go."""
        return {k: now - self.days(k) * DAY_S for k in KINDS if self.days(k) > 0}


def _settings(row: RetentionRow | None) -> RetentionSettings:
    if row is None:
        return RetentionSettings(
            **{f"{k}_days": d for k, d in DEFAULT_DAYS.items()},
            updated_at=None,
            last_pruned_at=None,
            last_pruned={},
        )
    return RetentionSettings(
        changes_days=row.changes_days,
        advances_days=row.advances_days,
        exceptions_days=row.exceptions_days,
        recovery_jobs_days=row.recovery_jobs_days,
        alerts_days=row.alerts_days,
        updated_at=row.updated_at,
        last_pruned_at=row.last_pruned_at,
        last_pruned={str(k): int(v) for k, v in (row.last_pruned or {}).items()},
    )


def check_days(kind: str, days: Any) -> int:
    """Return `days` as an int in 0..MAX_DAYS.

    Raises:
        ConfigError: an unknown kind, or days that are not a whole number in range.
    """
    if kind not in KINDS:
        raise ConfigError(f"retention of {kind!r}: use one of {', '.join(KINDS)}")
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_DAYS:
        raise ConfigError(
            f"{kind} retention {days!r}: whole days from 0 (keep forever) to {MAX_DAYS}"
        )
    return days


def _get_row(session: Session) -> RetentionRow:
    row = session.get(RetentionRow, 1)
    if row is None:  # created on first write; reads of a fresh store see the defaults
        row = RetentionRow(
            id=1,
            updated_at=time.time(),
            last_pruned={},
            **{f"{k}_days": d for k, d in DEFAULT_DAYS.items()},
        )
        session.add(row)
    return row


class RetentionStore:
    """Retention settings and pruning, reached as `store.retention`."""

    def __init__(self, read: SessionFn, write: SessionFn) -> None:
        self._read = read
        self._write = write

    def get(self) -> RetentionSettings:
        with self._read("retention settings") as session:
            return _settings(session.get(RetentionRow, 1))

    def set(self, days: Mapping[str, Any]) -> RetentionSettings:
        """Change the days kept of some kinds (`{"changes": 7}`); the others keep theirs.

        Raises:
            ConfigError: an unknown kind or a bad number of days; nothing changes then.
        """
        checked = {kind: check_days(kind, value) for kind, value in days.items()}
        with self._write("set retention") as session:
            row = _get_row(session)
            for kind, value in checked.items():
                setattr(row, f"{kind}_days", value)
            row.updated_at = time.time()
            session.flush()
            return _settings(row)

    def prune_batch(self, kind: str, cutoff: float, limit: int = PRUNE_BATCH_ROWS) -> int:
        """Delete up to `limit` rows of `kind` older than `cutoff`, in one transaction; return how many."""
        with self._write(f"prune {kind}") as session:
            if kind == "changes":
                return _prune_changes(session, cutoff, limit)
            table, column, extra = {
                "advances": (ADVANCES, ADVANCES.c.at, ()),
                "exceptions": (
                    EXCEPTIONS,
                    EXCEPTIONS.c.resolved_at,
                    (EXCEPTIONS.c.resolved_at.is_not(None),),
                ),
                "recovery_jobs": (
                    RECOVERY_JOBS,
                    RECOVERY_JOBS.c.finished_at,
                    (RECOVERY_JOBS.c.finished_at.is_not(None),),
                ),
                "alerts": (  # an open alert has no resolved_at; the state says so twice
                    ALERTS,
                    ALERTS.c.resolved_at,
                    (ALERTS.c.resolved_at.is_not(None), ALERTS.c.state == "resolved"),
                ),
            }[kind]
            ids = list(
                session.scalars(
                    select(table.c.id)
                    .where(column < cutoff, *extra)
                    .order_by(table.c.id)
                    .limit(limit)
                )
            )
            if ids:
                session.execute(delete(table).where(table.c.id.in_(ids)))
            return len(ids)

    def record_prune(self, now: float, deleted: Mapping[str, int]) -> None:
        """Keep what a prune removed, for GET /api/retention."""
        with self._write("record prune") as session:
            row = _get_row(session)
            row.last_pruned_at, row.last_pruned = now, {k: int(v) for k, v in deleted.items()}

    def prune(self, now: float, *, batch_rows: int = PRUNE_BATCH_ROWS) -> dict[str, int]:
        """Prune every kind by its settings, batch by batch; return rows deleted per kind."""
        deleted = dict.fromkeys(KINDS, 0)
        for kind, cutoff in self.get().cutoffs(now).items():
            while (n := self.prune_batch(kind, cutoff, batch_rows)) > 0:
                deleted[kind] += n
                if n < batch_rows:
                    break
        self.record_prune(now, deleted)
        return deleted


def _prune_changes(session: Session, cutoff: float, limit: int) -> int:
    """Old change rows, except the newest of each (mapping, source): its seq is the mapping's
    head. Each row by its whole key: a new source journal's row at the seq of an old one's (a
    recreated journal counts from 1 again) is another row, kept or deleted by its own age."""
    c = CHANGES.c
    newer = aliased(CHANGES)
    newest = (
        select(func.max(newer.c.seq))
        .where(newer.c.mapping_id == c.mapping_id, newer.c.source_node == c.source_node)
        .scalar_subquery()
    )
    keys = [
        tuple(k)
        for k in session.execute(
            select(c.mapping_id, c.source_node, c.seq, c.journal_id)
            .where(c.reported_at < cutoff, c.seq < newest)
            .order_by(c.reported_at)
            .limit(limit)
        )
    ]
    if keys:
        key = tuple_(c.mapping_id, c.source_node, c.seq, c.journal_id)
        session.execute(delete(CHANGES).where(key.in_(keys)))
    return len(keys)
