"""REST resource /api/policies: delta or dump copy, zstd level and bandwidth per network section or server pair.

A policy's bandwidth may follow the time of day: `windows` are tried in order and the first
that holds now sets the limit, else `bandwidth_limit_mbit` does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from relaysync.master.api._context import Context
from relaysync.master.events import EventType


class WindowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: str = Field(default="", description='"mon-fri", "sat,sun", "fri-mon"; empty = every day '
                                              "(a window past midnight belongs to the day it starts)")
    start: str = Field(description="HH:MM in the policy's timezone", examples=["08:00"])
    end: str = Field(description="HH:MM (24:00 = midnight); before start = runs past midnight",
                     examples=["20:00"])
    bandwidth_limit_mbit: float = Field(ge=0, description="the limit while the window holds; 0 = unlimited")


class WindowOut(BaseModel):
    days: str
    start: str
    end: str
    bandwidth_limit_mbit: float


class PolicyIn(BaseModel):
    scope: Literal["same_group", "same_region", "inter_region", "pair"]
    source: str | None = Field(default=None, description="pair only: source server name or node id")
    target: str | None = Field(default=None, description="pair only: target server name or node id")
    tls: bool = Field(default=True, description="false only on links you trust: no encryption, HMAC-authenticated")
    transfer: Literal["auto", "delta", "whole"] = "auto"
    zstd_level: int = Field(default=0, ge=0, le=19, description="0 = no compression")
    bandwidth_limit_mbit: float = Field(default=0.0, ge=0, description="0 = unlimited; the limit outside every window")
    windows: list[WindowIn] = Field(default_factory=list, description="time-of-day limits, first match wins; at most 24")
    timezone: str = Field(default="", description='IANA zone of the windows\' times, e.g. "Europe/Paris"; empty = UTC')


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
    windows: list[WindowOut]
    timezone: str


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
