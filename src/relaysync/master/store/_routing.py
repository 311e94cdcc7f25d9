"""Routing settings per mapping (auto or manual routes, fan-out, recovery policies), failed targets and recovery jobs.

The planner (routing/) is pure; what it plans from lives here: the mode and the manual hops, the
fan-out degree, how long a target may stay unreachable (`fail_after_s`) before it is marked
failed, and the recovery policy of the mapping with per-target overrides. A failed target is
durable (`routing_targets.failed_at`), so a restarted master keeps leaving it out. Each recovery is
a row in `recovery_jobs` (the job log of recoveries) with its outcome. Those two live in
_recovery.py (mixed into RoutingStore), the tables in _routing_tables.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from relaysync.errors import ConfigError
from relaysync.master.store import _mappings
from relaysync.master.store._modes import next_run
from relaysync.master.store._recovery import RecoveryStore, SessionFactory, _pairs
from relaysync.master.store._routing_tables import (
    DEFAULT_FAIL_AFTER_S,
    DEFAULT_FANOUT,
    MappingRoutingRow,
    RoutingTargetRow,
)
from relaysync.master.store.models import (
    CommitException,
    MappingTarget,
    Server,
    SourceHead,
    Watermark,
)
from relaysync.master.store.models import (
    Mapping as MappingRow,
)
from relaysync.routing.manual import manual_plan
from relaysync.routing.topology import Node

ROUTING_MODES = ("auto", "manual")
RECOVERY_POLICIES = ("at_once", "reserved", "manual")
MAX_FANOUT = 64  # a relay streaming to more children than this is a star again
MIN_FAIL_AFTER_S = 1.0
MAX_CAPACITY_WEIGHT = 1000
_TOPOLOGY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # fullmatch, never "$"


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    policy: str  # at_once | reserved | manual
    schedule: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingSettings:
    mapping_id: int
    mode: str = "auto"
    hops: tuple[tuple[str, str], ...] = ()  # manual: (parent, child) node ids
    fanout: int = DEFAULT_FANOUT
    recovery: TargetPolicy = TargetPolicy("at_once")
    fail_after_s: float = DEFAULT_FAIL_AFTER_S
    targets: Mapping[str, TargetPolicy] = field(default_factory=dict)  # node id -> override

    def policy_for(self, node_id: str) -> TargetPolicy:
        """The recovery policy of one target: its override, else the mapping's."""
        return self.targets.get(node_id, self.recovery)


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetChangeState:
    node_id: str
    name: str
    state: str  # committed | failed | pending
    watermark: int
    error: str = ""


def check_topology_name(value: str, what: str) -> str:
    """Return a region or group name once it is valid, like a node name."""
    if not _TOPOLOGY_NAME_RE.fullmatch(value):
        raise ConfigError(
            f"{what} name {value!r} is not valid: use 1-63 characters from "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return value


def check_capacity(capacity_weight: int) -> int:
    if not 1 <= capacity_weight <= MAX_CAPACITY_WEIGHT:
        raise ConfigError(
            f"capacity weight {capacity_weight} must be between 1 and {MAX_CAPACITY_WEIGHT}"
        )
    return capacity_weight


def check_policy(policy: str, schedule: str, what: str) -> TargetPolicy:
    """Return a valid recovery policy; a reserved one needs a schedule, and only it takes one."""
    if policy not in RECOVERY_POLICIES:
        raise ConfigError(
            f"{what} recovery policy {policy!r} is not one of {', '.join(RECOVERY_POLICIES)}"
        )
    if (policy == "reserved") != bool(schedule):
        raise ConfigError(
            f"{what}: a reserved recovery needs a schedule, and only a reserved one takes it"
        )
    if schedule:
        next_run(schedule, time.time())  # raises ConfigError on a bad schedule
    return TargetPolicy(policy, schedule)


def node_of(server: Any) -> Node:
    """The planner's view of a server (a Server row or a ServerInfo)."""
    group = getattr(server, "group_name", None)
    return Node(
        node_id=server.node_id,
        name=server.name,
        region=server.region,
        group=group if group is not None else server.group,
        capacity=max(1, server.capacity_weight),
    )


def _settings(
    row: MappingRoutingRow | None, mapping_id: int, targets: Sequence[RoutingTargetRow]
) -> RoutingSettings:
    overrides = {t.node_id: TargetPolicy(t.policy, t.schedule) for t in targets if t.policy}
    if row is None:
        return RoutingSettings(mapping_id=mapping_id, targets=overrides)
    return RoutingSettings(
        mapping_id=mapping_id,
        mode=row.mode,
        hops=tuple((p, c) for p, c in row.hops),
        fanout=row.fanout,
        recovery=TargetPolicy(row.recovery_policy, row.recovery_schedule),
        fail_after_s=row.fail_after_s,
        targets=overrides,
    )


class RoutingStore(RecoveryStore):
    """Routing settings, failed targets and recovery jobs in the master's store."""

    def __init__(
        self, read: SessionFactory, write: SessionFactory, bump_epoch: Callable[[Session], None]
    ) -> None:
        self._read, self._write = read, write
        self._bump_epoch = bump_epoch

    # --- Settings ---

    def get(self, mapping_id: int) -> RoutingSettings:
        with self._read("routing settings") as session:
            return self._get(session, mapping_id)

    def _get(self, session: Session, mapping_id: int) -> RoutingSettings:
        targets = list(
            session.scalars(
                select(RoutingTargetRow).where(RoutingTargetRow.mapping_id == mapping_id)
            )
        )
        return _settings(session.get(MappingRoutingRow, mapping_id), mapping_id, targets)

    def all(self) -> dict[int, RoutingSettings]:
        """The settings of every mapping that has any (others use the defaults)."""
        with self._read("all routing settings") as session:
            targets: dict[int, list[RoutingTargetRow]] = {}
            for t in session.scalars(select(RoutingTargetRow)):
                targets.setdefault(t.mapping_id, []).append(t)
            rows = {r.mapping_id: r for r in session.scalars(select(MappingRoutingRow))}
            return {
                m: _settings(rows.get(m), m, targets.get(m, []))
                for m in rows.keys() | targets.keys()
            }

    def set(
        self,
        mapping_id: int,
        *,
        mode: str | None = None,
        hops: Sequence[tuple[str, str]] | None = None,
        fanout: int | None = None,
        recovery: TargetPolicy | None = None,
        fail_after_s: float | None = None,
        target_policies: Mapping[str, TargetPolicy | None] | None = None,
    ) -> RoutingSettings:
        """Change some routing settings of a mapping; the others keep their value.

        A manual route is checked by the planner against the current topology: every target
        reached exactly once, no loop, only known servers. Hops name servers by name or node id.

        Raises:
            RouteError: a manual route the planner refuses (a ConfigError).
            ConfigError: a bad mode, fan-out, policy, schedule or delay, or a target override
                for a server that is not a target of the mapping.
            NotFound: no such mapping.
        """
        if mode is not None and mode not in ROUTING_MODES:
            raise ConfigError(f"routing mode {mode!r} is not one of {', '.join(ROUTING_MODES)}")
        if fanout is not None and not 1 <= fanout <= MAX_FANOUT:
            raise ConfigError(f"fan-out {fanout} must be between 1 and {MAX_FANOUT}")
        if fail_after_s is not None and fail_after_s < MIN_FAIL_AFTER_S:
            raise ConfigError(f"fail_after_s {fail_after_s} must be at least {MIN_FAIL_AFTER_S}")
        if recovery is not None:
            check_policy(recovery.policy, recovery.schedule, "mapping")
        with self._write("set routing settings") as session:
            mapping = _mappings.find_mapping(session, mapping_id)
            row = self._row(session, mapping.id)
            row.mode = mode or row.mode
            if row.mode == "manual":
                row.hops = [
                    list(h) for h in self._checked_hops(session, mapping, hops, row, fanout)
                ]
            elif hops:
                raise ConfigError("hops make a manual route: send them with mode manual")
            else:
                row.hops = []
            row.fanout = fanout if fanout is not None else row.fanout
            if recovery is not None:
                row.recovery_policy, row.recovery_schedule = recovery.policy, recovery.schedule
            row.fail_after_s = fail_after_s if fail_after_s is not None else row.fail_after_s
            row.updated_at = time.time()
            self._set_target_policies(session, mapping, target_policies or {})
            self._bump_epoch(session)
            session.flush()
            return self._get(session, mapping.id)

    def _row(self, session: Session, mapping_id: int) -> MappingRoutingRow:
        row = session.get(MappingRoutingRow, mapping_id)
        if row is None:
            row = MappingRoutingRow(
                mapping_id=mapping_id,
                mode="auto",
                hops=[],
                fanout=DEFAULT_FANOUT,
                recovery_policy="at_once",
                recovery_schedule="",
                fail_after_s=DEFAULT_FAIL_AFTER_S,
                updated_at=time.time(),
            )
            session.add(row)
        return row

    def _checked_hops(
        self,
        session: Session,
        mapping: MappingRow,
        hops: Sequence[tuple[str, str]] | None,
        row: MappingRoutingRow,
        fanout: int | None,
    ) -> list[tuple[str, str]]:
        given = [tuple(h) for h in (hops if hops is not None else row.hops)]
        if not given:
            raise ConfigError("a manual route needs hops, e.g. src>a,a>b")
        if any(len(h) != 2 for h in given):
            raise ConfigError("every manual hop is a [parent, child] pair")
        known = {s.node_id: node_of(s) for s in session.scalars(select(Server))}
        targets = [
            known[t]
            for t in session.scalars(
                select(MappingTarget.node_id).where(MappingTarget.mapping_id == mapping.id)
            )
            if t in known
        ]
        pairs = [(str(p), str(c)) for p, c in given]
        manual_plan(
            known[mapping.source_node],
            targets,
            pairs,
            known,
            fanout=fanout if fanout is not None else row.fanout,
        )
        by_name = {n.name: n.node_id for n in known.values()}
        return [
            (p if p in known else by_name[p], c if c in known else by_name[c]) for p, c in pairs
        ]

    def _set_target_policies(
        self, session: Session, mapping: MappingRow, policies: Mapping[str, TargetPolicy | None]
    ) -> None:
        targets = set(
            session.scalars(
                select(MappingTarget.node_id).where(MappingTarget.mapping_id == mapping.id)
            )
        )
        for ref, policy in policies.items():
            server = _mappings.resolve_server(session, ref)
            if server.node_id not in targets:
                raise ConfigError(
                    f"server {server.name!r} is not a target of mapping {mapping.name!r}"
                )
            if policy is not None:
                check_policy(policy.policy, policy.schedule, f"target {server.name!r}")
            trow = self._target_row(session, mapping.id, server.node_id)
            trow.policy, trow.schedule = (policy.policy, policy.schedule) if policy else ("", "")
            trow.next_recovery_at = None

    # --- Change state ---

    def change_states(self, mapping_id: int | str, seq: int) -> tuple[int, list[TargetChangeState]]:
        """Every target's state for one change of a mapping's source: committed, failed or pending.

        Committed: the target's watermark covers `seq` in the journal the source's head names
        ("" on either side matches) and no open exception names it. Failed: the target is
        failed, or an open exception names `seq` (`_open_failures`). Pending otherwise.

        Returns:
            (mapping id, one state per target, by name)
        """
        with self._read("change states") as session:
            mapping = _mappings.find_mapping(session, mapping_id)
            info = _mappings.infos(session, [mapping])[0]
            journal = _head_journal(session, mapping)
            marks = {
                target: mark
                for target, mark, of in session.execute(
                    select(Watermark.target_node, Watermark.seq, Watermark.journal_id).where(
                        Watermark.mapping_id == mapping.id,
                        Watermark.source_node == mapping.source_node,
                    )
                )
                # a watermark of another journal (a target that reports a reset source's new
                # journal before the head names it) says nothing of this journal's seqs
                if not journal or not of or of == journal
            }
            errors = _open_failures(session, mapping, seq, journal)
            failed = {
                r.node_id: r.reason
                for r in session.scalars(
                    select(RoutingTargetRow).where(
                        RoutingTargetRow.mapping_id == mapping.id,
                        RoutingTargetRow.failed_at.is_not(None),
                    )
                )
            }
            states = []
            for t in sorted(info.targets, key=lambda t: t.name):
                mark = marks.get(t.node_id, 0)
                if t.node_id in errors or t.node_id in failed:
                    state, error = (
                        "failed",
                        errors.get(t.node_id) or f"target failed: {failed[t.node_id]}",
                    )
                else:
                    state, error = ("committed" if mark >= seq else "pending"), ""
                states.append(
                    TargetChangeState(
                        node_id=t.node_id, name=t.name, state=state, watermark=mark, error=error
                    )
                )
            return mapping.id, states


def _head_journal(session: Session, mapping: MappingRow) -> str:
    """The journal the source's head names ("": none, or no head yet)."""
    journal = session.scalar(
        select(SourceHead.journal_id).where(
            SourceHead.mapping_id == mapping.id, SourceHead.source_node == mapping.source_node
        )
    )
    return journal or ""


def _open_failures(session: Session, mapping: MappingRow, seq: int, journal: str) -> dict[str, str]:
    """The error of each target's open failure of `seq` in the journal the source's head names:
    another journal's failure of that seq is another change ("" on either side matches any: not
    known). Until the head names a new journal, targets that already report it fail its seqs,
    which are not the head's; once it does, the old journal's open failures are closed
    (_journals.py `retire`)."""
    exc = CommitException
    query = select(exc.target_node, exc.error).where(
        exc.mapping_id == mapping.id,
        exc.source_node == mapping.source_node,
        exc.seq == seq,
        exc.resolved_at.is_(None),
    )
    if journal:
        query = query.where(or_(exc.journal_id == journal, exc.journal_id == ""))
    return _pairs(session, query)
