"""REST resources /api/mappings/{id}/routing|routes|recover|recoveries|changes/{seq}: relay routes and recovery."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel, Field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import INT64_MAX, InputModel
from relaysync.master.events import EventType
from relaysync.master.store._recovery import RecoveryJob
from relaysync.master.store._routing import (
    MAX_FANOUT,
    MIN_FAIL_AFTER_S,
    RoutingSettings,
    TargetPolicy,
)

Policy = Literal["at_once", "reserved", "manual"]


class TargetPolicyIO(InputModel):
    policy: Policy
    schedule: str = Field(
        default="", description="reserved only: at:ISO-DATETIME, every:SECONDS or cron:EXPR"
    )


class RoutingIn(InputModel):
    """Fields left out keep their value."""

    mode: Literal["auto", "manual"] | None = None
    hops: list[tuple[str, str]] | None = Field(
        default=None,
        description="manual: [parent, child] server names (or node ids), the source first",
    )
    fanout: int | None = Field(default=None, ge=1, le=MAX_FANOUT, description="children per relay")
    recovery_policy: Policy | None = None
    recovery_schedule: str | None = Field(default=None, description="with recovery_policy reserved")
    fail_after_s: float | None = Field(
        default=None,
        ge=MIN_FAIL_AFTER_S,
        description="unreachable this long -> the target is failed",
    )
    targets: dict[str, TargetPolicyIO | None] | None = Field(
        default=None,
        description="per-target recovery policy by server name; null drops the override",
    )


class RoutingOut(BaseModel):
    mapping_id: int
    mode: str
    hops: list[tuple[str, str]]  # server names
    fanout: int
    recovery_policy: str
    recovery_schedule: str
    fail_after_s: float
    targets: dict[str, TargetPolicyIO]  # overrides, by server name


class HopOut(BaseModel):
    parent: str
    child: str
    parent_node: str
    child_node: str
    level: str


class FailedOut(BaseModel):
    target: str
    node_id: str
    failed_at: float
    reason: str
    policy: str
    next_recovery_at: float | None


class FailedHopOut(BaseModel):
    parent: str
    child: str
    until: float
    error: str = ""  # why its last attempt failed (the agent's words)


class RecoveryOut(BaseModel):
    id: int
    mapping_id: int
    target: str
    target_node: str
    trigger: str  # at_once | reserved | manual
    started_at: float
    from_seq: int
    goal_seq: int
    finished_at: float | None
    outcome: str  # running | done | failed
    detail: str


class RoutesOut(BaseModel):
    mapping_id: int
    mode: str
    route_epoch: int
    source: str
    hops: list[HopOut]  # empty: a star from the source
    unreachable: list[str]
    unreachable_since: dict[str, float]
    failed: list[FailedOut]
    failed_hops: list[FailedHopOut]
    recoveries: list[RecoveryOut]  # running


class RecoverIn(InputModel):
    target: str = Field(description="the failed target's server name or node id")


class TargetStateOut(BaseModel):
    target: str
    node_id: str
    state: Literal["committed", "failed", "pending"]
    watermark: int
    error: str


class ChangeStateOut(BaseModel):
    mapping_id: int
    seq: int
    targets: list[TargetStateOut]


def _names(context: Context) -> dict[str, str]:
    return {s.node_id: s.name for s in context.store.list_servers()}


def _routing_out(settings: RoutingSettings, names: dict[str, str]) -> RoutingOut:
    return RoutingOut(
        mapping_id=settings.mapping_id,
        mode=settings.mode,
        hops=[(names.get(p, p), names.get(c, c)) for p, c in settings.hops],
        fanout=settings.fanout,
        recovery_policy=settings.recovery.policy,
        recovery_schedule=settings.recovery.schedule,
        fail_after_s=settings.fail_after_s,
        targets={
            names.get(n, n): TargetPolicyIO(policy=p.policy, schedule=p.schedule)  # type: ignore[arg-type]
            for n, p in settings.targets.items()
        },
    )


def _recovery_out(job: RecoveryJob, names: dict[str, str]) -> RecoveryOut:
    return RecoveryOut(target=names.get(job.target_node, job.target_node), **asdict(job))


def get_routing(id_or_name: str, context: Context) -> RoutingOut:
    """A mapping's routing settings: auto or manual route, fan-out, recovery policies, fail delay."""
    mapping = context.store.get_mapping(id_or_name)
    return _routing_out(context.store.routing.get(mapping.id), _names(context))


def put_routing(id_or_name: str, body: RoutingIn, context: Context) -> RoutingOut:
    """Change a mapping's routing settings; a manual route is checked by the planner (400 if refused)."""
    mapping = context.store.get_mapping(id_or_name)
    recovery = None
    if body.recovery_policy is not None or body.recovery_schedule is not None:
        current = context.store.routing.get(mapping.id).recovery
        recovery = TargetPolicy(
            body.recovery_policy or current.policy, body.recovery_schedule or ""
        )
    targets = (
        None
        if body.targets is None
        else {
            name: None if p is None else TargetPolicy(p.policy, p.schedule)
            for name, p in body.targets.items()
        }
    )
    settings = context.store.routing.set(
        mapping.id,
        mode=body.mode,
        hops=body.hops,
        fanout=body.fanout,
        recovery=recovery,
        fail_after_s=body.fail_after_s,
        target_policies=targets,
    )
    context.router.settings_changed()
    context.changed(EventType.MAPPING_CHANGED, mapping_id=mapping.id, routing=settings.mode)
    return _routing_out(settings, _names(context))


def get_routes(id_or_name: str, context: Context) -> RoutesOut:
    """The current distribution tree of a mapping, what it cannot reach, and what failed."""
    mapping = context.store.get_mapping(id_or_name)
    view = context.router.view(mapping.id)
    names = _names(context)

    def name(node_id: str) -> str:
        return names.get(node_id, node_id)

    return RoutesOut(
        mapping_id=mapping.id,
        mode=view.settings.mode,
        route_epoch=view.route_epoch,
        source=name(view.source),
        hops=[
            HopOut(
                parent=name(h.parent),
                child=name(h.child),
                parent_node=h.parent,
                child_node=h.child,
                level=h.level,
            )
            for h in view.routes
        ],
        unreachable=[name(n) for n in view.unreachable],
        unreachable_since={name(n): t for n, t in view.unreachable_since.items()},
        failed=[
            FailedOut(
                target=name(f.node_id),
                node_id=f.node_id,
                failed_at=f.failed_at,
                reason=f.reason,
                policy=view.settings.policy_for(f.node_id).policy,
                next_recovery_at=f.next_recovery_at,
            )
            for f in view.failed
        ],
        failed_hops=[
            FailedHopOut(parent=name(p), child=name(c), until=u, error=e)
            for p, c, u, e in view.failed_hops
        ],
        recoveries=[_recovery_out(j, names) for j in view.recoveries],
    )


def recover(id_or_name: str, body: RecoverIn, context: Context) -> RecoveryOut:
    """Put a failed target back now (any policy): it is planned in and resynced by manifest comparison."""
    mapping = context.store.get_mapping(id_or_name)
    server = context.store.get_server(body.target)
    job = context.router.recover(mapping.id, server.node_id)
    context.changed(EventType.MAPPING_CHANGED, mapping_id=mapping.id, recovered=server.name)
    return _recovery_out(job, _names(context))


def list_recoveries(
    id_or_name: str, context: Context, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[RecoveryOut]:
    """A mapping's recovery jobs, newest first, with their outcome."""
    mapping = context.store.get_mapping(id_or_name)
    names = _names(context)
    return [_recovery_out(j, names) for j in context.store.routing.recoveries(mapping.id, limit)]


def get_change(
    id_or_name: str, seq: Annotated[int, Path(ge=1, le=INT64_MAX)], context: Context
) -> ChangeStateOut:
    """For one change (its source's seq): every target's state, committed, failed or pending."""
    mapping_id, states = context.store.routing.change_states(id_or_name, seq)
    return ChangeStateOut(
        mapping_id=mapping_id,
        seq=seq,
        targets=[
            TargetStateOut(
                target=s.name,
                node_id=s.node_id,
                state=s.state,  # type: ignore[arg-type]
                watermark=s.watermark,
                error=s.error,
            )
            for s in states
        ],
    )
