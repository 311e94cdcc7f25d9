"""REST resource /api/policies: delta or dump copy, zstd level and bandwidth per network section or server pair."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from relaysync.master.api._context import Context
from relaysync.master.events import EventType


class PolicyIn(BaseModel):
    scope: Literal["same_group", "same_region", "inter_region", "pair"]
    source: str | None = Field(default=None, description="pair only: source server name or node id")
    target: str | None = Field(default=None, description="pair only: target server name or node id")
    tls: bool = Field(default=True, description="false only on links you trust: no encryption, HMAC-authenticated")
    transfer: Literal["auto", "delta", "whole"] = "auto"
    zstd_level: int = Field(default=0, ge=0, le=19, description="0 = no compression")
    bandwidth_limit_mbit: float = Field(default=0.0, ge=0, description="0 = unlimited")


class PolicyOut(BaseModel):
    id: int
    scope: str
    source: str
    target: str
    tls: bool
    transfer: str
    zstd_level: int
    bandwidth_limit_mbit: float
    updated_at: float


def list_policies(context: Context) -> list[PolicyOut]:
    """Every policy row; links without a row use their section's default."""
    return [PolicyOut(**vars(p)) for p in context.store.policies.list_policies()]


def put_policy(body: PolicyIn, context: Context) -> PolicyOut:
    """Create or replace the policy of a section or a server pair; agents get it at once."""
    info = context.store.policies.set_policy(**body.model_dump())
    context.changed(EventType.MAPPING_CHANGED, policy=info.id, scope=info.scope)
    return PolicyOut(**vars(info))


def delete_policy(policy_id: int, context: Context) -> None:
    """Drop a policy row: its links fall back to the section (or section default)."""
    context.store.policies.delete_policy(policy_id)
    context.changed(EventType.MAPPING_CHANGED, policy=policy_id, deleted=True)
