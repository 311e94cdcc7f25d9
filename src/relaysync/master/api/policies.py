"""REST resource /api/policies: delta or dump copy, zstd level and bandwidth per network section or server pair.

A field left out of a PUT (or null) is inherited, field by field: a pair's from its section's
policy, a section's from the section's default. Listed rows show null for an inherited field
and, under `effective`, what their links get.
A policy's bandwidth may follow the time of day: `windows` are tried in order and the first
that holds now sets the limit, else `bandwidth_limit_mbit` does.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel, PathInt
from relaysync.master.events import EventType
from relaysync.master.store._policies import PolicyInfo

INHERIT = " (left out or null: inherited from the section, or the section's default)"


class WindowIn(InputModel):
    model_config = ConfigDict(extra="forbid")

    days: str = Field(
        default="",
        description='"mon-fri", "sat,sun", "fri-mon"; empty = every day '
        "(a window past midnight belongs to the day it starts)",
    )
    start: str = Field(description="HH:MM in the policy's timezone", examples=["08:00"])
    end: str = Field(
        description="HH:MM (24:00 = midnight); before start = runs past midnight",
        examples=["20:00"],
    )
    bandwidth_limit_mbit: float = Field(
        ge=0, description="the limit while the window holds; 0 = unlimited"
    )


class WindowOut(BaseModel):
    days: str
    start: str
    end: str
    bandwidth_limit_mbit: float


class PolicyIn(InputModel):
    """Fields left out (or null) are inherited: a pair's from its section, a section's from its default."""

    scope: Literal["same_group", "same_region", "inter_region", "pair"]
    source: str | None = Field(default=None, description="pair only: source server name or node id")
    target: str | None = Field(default=None, description="pair only: target server name or node id")
    tls: bool | None = Field(
        default=None,
        description="false only on links you trust: no encryption, "
        "HMAC-authenticated; the default is true" + INHERIT,
    )
    transfer: Literal["auto", "delta", "whole"] | None = Field(
        default=None, description="default auto" + INHERIT
    )
    zstd_level: int | None = Field(
        default=None,
        ge=0,
        le=19,
        description="0 = no compression; the default is "
        "0 in a group, 1 in a region, 3 between regions" + INHERIT,
    )
    bandwidth_limit_mbit: float | None = Field(
        default=None, ge=0, description="0 = unlimited; the limit outside every window" + INHERIT
    )
    windows: list[WindowIn] | None = Field(
        default=None, description="time-of-day limits, first match wins; at most 24" + INHERIT
    )
    timezone: str | None = Field(
        default=None,
        description='IANA zone of the windows\' times, e.g. "Europe/Paris"; empty = UTC' + INHERIT,
    )


class EffectiveOut(BaseModel):
    """What the links of a policy row get once inherited fields are filled in."""

    tls: bool
    transfer: str
    zstd_level: int
    bandwidth_limit_mbit: float
    windows: list[WindowOut]
    timezone: str


class PolicyOut(BaseModel):
    id: int
    scope: str
    source: str
    target: str
    tls: bool | None  # None (null): inherited; see effective
    transfer: str | None
    zstd_level: int | None
    bandwidth_limit_mbit: float | None
    updated_at: float
    windows: list[WindowOut] | None
    timezone: str | None
    effective: EffectiveOut  # a pair: its link's policy; a section: that of its links without a pair policy


def _out(info: PolicyInfo) -> PolicyOut:
    return PolicyOut(**{**vars(info), "effective": msgspec.to_builtins(info.effective)})


def list_policies(context: Context) -> list[PolicyOut]:
    """Every policy row, what it sets and what its links get; links without a row use their section's default."""
    return [_out(p) for p in context.store.policies.list_policies()]


def put_policy(body: PolicyIn, context: Context) -> PolicyOut:
    """Create or replace the policy of a section or a server pair; agents get it at once."""
    info = context.store.policies.set_policy(**body.model_dump())
    context.changed(EventType.MAPPING_CHANGED, policy=info.id, scope=info.scope)
    return _out(info)


def delete_policy(policy_id: PathInt, context: Context) -> None:
    """Drop a policy row: its links fall back to the section (or section default)."""
    context.store.policies.delete_policy(policy_id)
    context.changed(EventType.MAPPING_CHANGED, policy=policy_id, deleted=True)
