"""REST resource /api/mappings: what is replicated from where to where, and how far each target is."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel
from relaysync.master.events import EventType

logger = logging.getLogger(__name__)


class TargetIn(InputModel):
    server: str = Field(description="server name or node id")
    path: str = Field(description="absolute folder on the target server")


class MappingIn(InputModel):
    name: str
    source: str = Field(description="server name or node id")
    source_path: str = Field(description="absolute folder on the source server")
    targets: list[TargetIn] = Field(min_length=1)
    include: list[str] = Field(default_factory=list, description="regular expressions; empty = all")
    exclude: list[str] = Field(default_factory=list)
    durability: Literal["safe", "fast"] = "safe"
    enabled: bool = True


class MappingPatch(InputModel):
    name: str | None = None
    source: str | None = None
    source_path: str | None = None
    targets: list[TargetIn] | None = Field(default=None, min_length=1)
    include: list[str] | None = None
    exclude: list[str] | None = None
    durability: Literal["safe", "fast"] | None = None
    enabled: bool | None = None


class TargetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    node_id: str
    name: str
    path: str


class MappingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    source_node: str
    source_name: str
    source_path: str
    targets: list[TargetOut]
    include: list[str]
    exclude: list[str]
    durability: str
    enabled: bool  # as an operator set it (PATCH enabled)
    # What its agents run: "enabled"; "disabled" (enabled false); "source_revoked": sent
    # disabled although enabled, its source server being revoked (the status' source_error
    # says so), until the mapping names another source.
    state: Literal["enabled", "disabled", "source_revoked"]
    source_revoked: bool
    created_at: float
    updated_at: float


class TargetStatusOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    target: str  # node id
    target_name: str
    path: str
    watermark: int  # every seq <= this is committed, except open exceptions
    highest_seq: int  # the source's highest seq known to the master
    # Changes sent and not committed: highest_seq - watermark; for a manual or reserved mapping
    # only those its releases cover: min(highest_seq, released_upto) - watermark. Never negative.
    lag: int
    pending: int  # changes held back until the next release (manual or reserved); realtime: 0
    open_exceptions: int
    updated_at: float | None


class MappingStatusOut(BaseModel):
    mapping_id: int
    name: str
    source_node: str
    targets: list[TargetStatusOut]
    # Why the source cannot run (its folder missing, refused, unreadable...), as its agent last
    # reported it; "" while it runs. Kept while that agent's link is down (its server shows
    # down), cleared by its next report without it.
    source_error: str = ""
    source_error_since: float | None = None  # unix time (the agent's) of its first failure
    source_error_attempts: int = 0  # starts tried and failed since then


def _targets(targets: list[TargetIn]) -> list[tuple[str, str]]:
    return [(t.server, t.path) for t in targets]


def list_mappings(context: Context) -> list[MappingOut]:
    """Every mapping, by id."""
    return [MappingOut.model_validate(m) for m in context.store.list_mappings()]


def get_mapping(id_or_name: str, context: Context) -> MappingOut:
    """One mapping, by id or name."""
    return MappingOut.model_validate(context.store.get_mapping(id_or_name))


def create_mapping(body: MappingIn, context: Context) -> MappingOut:
    """Create a mapping; its agents get it with the next assignment push."""
    fields: dict[str, Any] = body.model_dump(exclude={"targets"})
    info = context.store.create_mapping(targets=_targets(body.targets), **fields)
    context.changed(EventType.MAPPING_CREATED, mapping_id=info.id, name=info.name)
    return MappingOut.model_validate(info)


def update_mapping(id_or_name: str, body: MappingPatch, context: Context) -> MappingOut:
    """Change some fields of a mapping."""
    fields = body.model_dump(exclude_unset=True, exclude={"targets"})
    if body.targets is not None:
        fields["targets"] = _targets(body.targets)
    if any(value is None for value in fields.values()):
        fields = {k: v for k, v in fields.items() if v is not None}
    info = context.store.update_mapping(id_or_name, **fields)
    context.changed(EventType.MAPPING_CHANGED, mapping_id=info.id, name=info.name)
    return MappingOut.model_validate(info)


def delete_mapping(id_or_name: str, context: Context) -> None:
    """Delete a mapping and its job log; its agents stop it with the next assignment push."""
    info = context.store.get_mapping(id_or_name)
    context.store.delete_mapping(info.id)
    context.changed(EventType.MAPPING_DELETED, mapping_id=info.id, name=info.name)


def get_mapping_status(id_or_name: str, context: Context) -> MappingStatusOut:
    """Per target: watermark, the source's highest known seq, the lag between them, and (manual
    or reserved mappings) the changes held back until the next release; and why the source
    cannot run, if it cannot."""
    info = context.store.get_mapping(id_or_name)
    targets = context.store.mapping_status(info.id)
    failure = context.source_failures.get(info.id, info.source_node)
    error = failure.error if failure is not None else ""
    if not error and context.store.is_revoked(info.source_node):
        error = (
            f"its source server {info.source_name!r} was revoked: its targets keep their files"
            f" and take nothing more until the mapping names another source"
            f" (PATCH /api/mappings/{info.id} with source and source_path)"
        )
    return MappingStatusOut(
        mapping_id=info.id,
        name=info.name,
        source_node=info.source_node,
        targets=[TargetStatusOut.model_validate(t) for t in targets],
        source_error=error,
        source_error_since=failure.since if failure is not None else None,
        source_error_attempts=failure.attempts if failure is not None else 0,
    )
