"""Transmission modes per mapping: real-time (default), manual, or reserved on a schedule.

A manual or reserved mapping's changes are journaled on its source and sent only when the
master bumps the mapping's release counter: the operator's "send", or a due schedule (at a
date-time, every N seconds, or a cron expression). A run missed while the master was down
happens once at start, not once per missed slot. The source reports which journal seq each
release covers, so progress can be shown against the targets' watermarks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter
from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    bindparam,
    exists,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from relaysync.errors import ConfigError
from relaysync.master.store._journals import retire, void_watermarks
from relaysync.master.store.models import Base, Mapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch.target_policy import DEFAULT_MODE_MASK, SYMLINK_POLICIES, mode_mask_problem

logger = logging.getLogger(__name__)

MODES = ("realtime", "manual", "reserved")
TRANSFER_OVERRIDES = ("auto", "delta", "whole")
SessionFactory = Callable[[str], AbstractContextManager[Session]]


class MappingModeRow(Base):
    __tablename__ = "mapping_modes"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    mode: Mapped[str] = mapped_column(String(16), default="realtime")
    schedule: Mapped[str] = mapped_column(
        String(255), default=""
    )  # at:ISO | every:SECONDS | cron:EXPR
    release: Mapped[int] = mapped_column(Integer, default=0)
    released_upto: Mapped[int] = mapped_column(
        BigInteger, default=0
    )  # the source's seq for `release`
    # the release the source last reported taking (0022): `released_upto` is its seq
    released_release: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the source journal `released_upto` counts in (0023; "": not reported yet, an older agent)
    released_journal: Mapped[str] = mapped_column(String(64), default="", server_default="")
    delete_confirm: Mapped[int] = mapped_column(
        Integer, default=0
    )  # operator confirmations of mass deletes
    keep_versions: Mapped[int] = mapped_column(
        Integer, default=0
    )  # previous versions kept on targets
    keep_versions_on: Mapped[list[str]] = mapped_column(JSON, default=list)  # node ids; empty = all
    # auto | delta | whole forced on every link of the mapping over the link policies; "" = per policy
    transfer_override: Mapped[str] = mapped_column(String(8), default="")  # 0008_policy_windows
    # What the targets let land (watch/target_policy.py; 0017_target_policy): symlinks "safe",
    # "any" or "" (each target agent's default); the permission bits they remove (2: o-w).
    symlinks: Mapped[str] = mapped_column(String(8), default="", server_default="")
    mode_mask: Mapped[int] = mapped_column(Integer, default=0o002, server_default="2")
    next_run_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_run_at: Mapped[float | None] = mapped_column(Float, nullable=True)


# The reserved mappings whose next run is due at :now (constants: built once, their compiled
# form cached; the scheduler asks twice a second).
_DUE = (
    MappingModeRow.mode == "reserved",
    MappingModeRow.next_run_at.is_not(None),
    MappingModeRow.next_run_at <= bindparam("now"),
)
_ANY_DUE = select(MappingModeRow.mapping_id).where(*_DUE).limit(1)
_ALL_DUE = select(MappingModeRow).where(*_DUE)


def forget_released(session: Session, mapping_id: int) -> None:
    """The mapping's source changed: how far the releases covered the former source's journal
    says nothing of the new one's (its seqs start anew), so none of it counts as released until
    the new source reports what the current release covers (`record_release` takes any seq
    above 0). Otherwise its changes showed as lag, not pending, until it passed the old seq."""
    session.execute(
        update(MappingModeRow)
        .where(MappingModeRow.mapping_id == mapping_id)
        .values(released_upto=0, released_release=0, released_journal="")
    )


def _new_journal(session: Session, mapping_id: int, source_node: str, journal_id: str) -> bool:
    """Note `journal_id` as the journal the mapping's source counts in; if it replaces another
    (recreated: its seqs start again at 1), forget what counted in the old one's seqs: what the
    releases covered and how far the targets committed (the upsert of the job log never lowers
    a watermark but in another journal: store/_journals.py). Return whether it did."""
    row = session.get(MappingModeRow, mapping_id)
    if row is None or not journal_id or row.released_journal == journal_id:
        return False
    known, row.released_journal = row.released_journal, journal_id
    if not known:  # the first one heard of (a source that reported before 0023): nothing to void
        return False
    row.released_upto = row.released_release = 0
    # those a target reported in the new journal already are kept (reported before this)
    now = time.time()
    void_watermarks(session, mapping_id, source_node, journal_id, now)
    retire(session, mapping_id, source_node, known, now)  # a late report of it: dropped
    logger.warning(
        "mapping %s: the source's journal is new (%s, was %s): its releases and the targets' "
        "watermarks start again from 0",
        mapping_id,
        journal_id,
        known,
    )
    return True


@dataclass(frozen=True)
class ModeInfo:
    mapping_id: int
    mode: str
    schedule: str
    release: int
    released_upto: int
    released_release: int  # the release `released_upto` belongs to (0: none taken yet)
    next_run_at: float | None
    last_run_at: float | None


def _info(row: MappingModeRow) -> ModeInfo:
    return ModeInfo(
        mapping_id=row.mapping_id,
        mode=row.mode,
        schedule=row.schedule,
        release=row.release,
        released_upto=row.released_upto,
        released_release=row.released_release,
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
    )


def next_run(schedule: str, after: float) -> float | None:
    """The first run of `schedule` strictly after `after` (unix time); None when there is none.

    Raises:
        ConfigError: a schedule that is not at:ISO-8601, every:SECONDS or cron:EXPRESSION.
    """
    kind, _, value = schedule.partition(":")
    try:
        if kind == "at":
            at = datetime.fromisoformat(value)
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            return at.timestamp() if at.timestamp() > after else None
        if kind == "every":
            seconds = float(value)
            if seconds <= 0:
                raise ValueError("interval must be positive")
            return after + seconds
        if kind == "cron":
            return float(croniter(value, datetime.fromtimestamp(after, UTC)).get_next(float))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"schedule {schedule!r}: {exc}") from exc
    raise ConfigError(
        f"schedule {schedule!r} must be at:ISO-DATETIME, every:SECONDS or cron:EXPRESSION"
    )


class ModeStore:
    def __init__(
        self, read: SessionFactory, write: SessionFactory, bump_epoch: Callable[[Session], None]
    ) -> None:
        self._read, self._write = read, write
        self._bump_epoch = bump_epoch

    def _row(self, session: Session, mapping_id: int) -> MappingModeRow:
        row = session.get(MappingModeRow, mapping_id)
        if row is None:
            row = MappingModeRow(
                mapping_id=mapping_id,
                mode="realtime",
                schedule="",
                release=0,
                released_upto=0,
                released_release=0,
                delete_confirm=0,
                keep_versions=0,
                keep_versions_on=[],
                transfer_override="",
                symlinks="",
                mode_mask=DEFAULT_MODE_MASK,
            )
            session.add(row)
        return row

    def get(self, mapping_id: int) -> ModeInfo:
        with self._read("mapping mode") as session:
            row = session.get(MappingModeRow, mapping_id)
            return (
                _info(row)
                if row is not None
                else ModeInfo(mapping_id, "realtime", "", 0, 0, 0, None, None)
            )

    def set_mode(self, mapping_id: int, mode: str, schedule: str = "") -> ModeInfo:
        """Set how a mapping transmits; a reserved mapping needs a valid schedule."""
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if (mode == "reserved") != bool(schedule):
            raise ConfigError(
                "a reserved mapping needs a schedule, and only a reserved one takes it"
            )
        now = time.time()
        first = next_run(schedule, now) if schedule else None
        with self._write("set mapping mode") as session:
            row = self._row(session, mapping_id)
            row.mode, row.schedule, row.next_run_at = mode, schedule, first
            self._bump_epoch(session)
            session.flush()
            return _info(row)

    def release(self, mapping_id: int) -> ModeInfo:
        """Send what is journaled now (the operator's "send"): bump the release counter."""
        with self._write("release mapping") as session:
            row = self._row(session, mapping_id)
            row.release += 1
            row.last_run_at = time.time()
            self._bump_epoch(session)
            session.flush()
            return _info(row)

    def set_versions(self, mapping_id: int, keep: int, on: Sequence[str]) -> None:
        """Keep the previous `keep` versions on the targets `on` (node ids; empty = every target)."""
        if not 0 <= keep <= 1000:
            raise ConfigError(f"versions to keep {keep} is outside 0..1000")
        with self._write("set versions") as session:
            row = self._row(session, mapping_id)
            row.keep_versions, row.keep_versions_on = keep, list(on)
            self._bump_epoch(session)

    def get_transfer(self, mapping_id: int) -> str | None:
        """The delta/dump choice forced on the mapping's links; None: each link's policy decides."""
        with self._read("mapping transfer") as session:
            row = session.get(MappingModeRow, mapping_id)
            return (row.transfer_override or None) if row is not None else None

    def set_transfer(self, mapping_id: int, transfer: str | None) -> None:
        """Force delta or dump copy (or auto) on every link of a mapping; None hands it back to the policies."""
        if transfer is not None and transfer not in TRANSFER_OVERRIDES:
            raise ConfigError(
                f"transfer {transfer!r} is not one of {', '.join(TRANSFER_OVERRIDES)} (or null)"
            )
        with self._write("set mapping transfer") as session:
            self._row(session, mapping_id).transfer_override = transfer or ""
            self._bump_epoch(session)

    def get_target_policy(self, mapping_id: int) -> tuple[str, int]:
        """(symlinks, mode_mask) the mapping's targets apply; symlinks "" = each agent's default."""
        with self._read("mapping target policy") as session:
            row = session.get(MappingModeRow, mapping_id)
            return (row.symlinks, row.mode_mask) if row is not None else ("", DEFAULT_MODE_MASK)

    def set_target_policy(self, mapping_id: int, symlinks: str, mode_mask: int) -> None:
        """Set which symlinks the mapping's targets take and which mode bits they remove."""
        if symlinks not in ("", *SYMLINK_POLICIES):
            raise ConfigError(
                f"symlink policy {symlinks!r} is not one of safe, any or '' (the agents' default)"
            )
        problem = mode_mask_problem(mode_mask)
        if problem:
            raise ConfigError(problem)
        with self._write("set mapping target policy") as session:
            row = self._row(session, mapping_id)
            row.symlinks, row.mode_mask = symlinks, mode_mask
            self._bump_epoch(session)

    def confirm_deletes(self, mapping_id: int) -> int:
        """The operator confirms the deletes a source held back (mass-delete guard)."""
        with self._write("confirm deletes") as session:
            row = self._row(session, mapping_id)
            row.delete_confirm += 1
            self._bump_epoch(session)
            session.flush()
            return row.delete_confirm

    def run_due(self, now: float) -> list[int]:
        """Release every reserved mapping whose run is due; return their ids.

        However many runs were missed (the master was down), each due mapping runs once, and
        its next run is computed from now.
        """
        # Checked first in a read transaction: the scheduler asks twice a second, and a write
        # transaction (BEGIN IMMEDIATE on SQLite) each time contended with the job log's writes
        # for nothing. The write transaction selects again: what it releases is what is due then.
        with self._read("due schedules") as session:
            if session.scalar(_ANY_DUE, {"now": now}) is None:
                return []
        with self._write("run due schedules") as session:
            due = list(session.scalars(_ALL_DUE, {"now": now}))
            for row in due:
                row.release += 1
                row.last_run_at = now
                row.next_run_at = next_run(row.schedule, now)
            if due:
                self._bump_epoch(session)
            return [row.mapping_id for row in due]

    def record_release(
        self,
        mapping_id: int,
        release: int,
        upto_seq: int,
        source_node: str = "",
        journal_id: str = "",
    ) -> None:
        """Note what the mapping's current release covers, as its source reported it: one
        guarded update, so a report of a former source (`source_node` given and no longer the
        mapping's) or of an older release, racing a source move that reset the progress, can
        never set it back. A `journal_id` other than the one noted before (the source's journal
        was recreated) first resets what counted in the old one's seqs (`_new_journal`): else
        `released_upto` stayed at the old, higher seq, and `relaysync send` waited for it."""
        guards = [MappingModeRow.mapping_id == mapping_id, MappingModeRow.release == release]
        with self._write("record release") as session:
            source = session.scalar(select(Mapping.source_node).where(Mapping.id == mapping_id))
            if source is None or (source_node and source != source_node):
                return  # deleted, or a former source's report
            if source_node:  # checked again in the update: a move racing this write
                guards.append(
                    exists().where(Mapping.id == mapping_id, Mapping.source_node == source_node)
                )
            _new_journal(session, mapping_id, source, journal_id)
            session.execute(
                update(MappingModeRow)
                .where(*guards, MappingModeRow.released_upto < upto_seq)
                .values(released_upto=upto_seq)
            )
            session.execute(  # taken, even if nothing new was journaled since the last one
                update(MappingModeRow)
                .where(*guards, MappingModeRow.released_release < release)
                .values(released_release=release)
            )

    def apply(self, session: Session, specs: Sequence[MappingSpec]) -> Iterator[MappingSpec]:
        """Yield the specs with their mode and release counter filled in."""
        rows = {
            r.mapping_id: r
            for r in session.scalars(
                select(MappingModeRow).where(
                    MappingModeRow.mapping_id.in_([s.mapping_id for s in specs])
                )
            )
        }
        for spec in specs:
            row = rows.get(spec.mapping_id)
            if row is None:
                yield spec
                continue
            fields = {f: getattr(spec, f) for f in spec.__struct_fields__}
            fields.update(
                mode=row.mode,
                release=row.release,
                delete_confirm=row.delete_confirm,
                keep_versions=row.keep_versions,
                keep_versions_on=tuple(row.keep_versions_on or ()),
                transfer_override=row.transfer_override or "",
                symlinks=row.symlinks or "",
                mode_mask=row.mode_mask,
            )
            yield MappingSpec(**fields)
