"""REST resources /api/mappings/{id}/mode and /send: real-time, manual or reserved transmission.

Also the other per-mapping sending settings: /versions (backups) and /transfer (delta or dump
copy forced over the link policies).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel
from relaysync.master.events import EventType


class ModeIn(InputModel):
    mode: Literal["realtime", "manual", "reserved"]
    schedule: str = Field(
        default="", description="reserved only: at:ISO-DATETIME, every:SECONDS or cron:EXPR"
    )


class ModeOut(BaseModel):
    mapping_id: int
    mode: str
    schedule: str
    release: int  # how many sends (manual or reserved runs) so far
    released_upto: int  # the source's journal seq the last send covers (0 until it reports)
    released_release: int = 0  # the release `released_upto` belongs to (the source took it)
    next_run_at: float | None
    last_run_at: float | None


def get_mode(id_or_name: str, context: Context) -> ModeOut:
    mapping = context.store.get_mapping(id_or_name)
    return ModeOut(**vars(context.store.modes.get(mapping.id)))


def put_mode(id_or_name: str, body: ModeIn, context: Context) -> ModeOut:
    """Switch a mapping's transmission mode; a manual or reserved mapping keeps journaling."""
    mapping = context.store.get_mapping(id_or_name)
    info = context.store.modes.set_mode(mapping.id, body.mode, body.schedule)
    context.changed(EventType.MAPPING_CHANGED, mapping_id=mapping.id, mode=body.mode)
    return ModeOut(**vars(info))


def send_now(id_or_name: str, context: Context) -> ModeOut:
    """Send what the source has journaled so far (manual transmission)."""
    mapping = context.store.get_mapping(id_or_name)
    info = context.store.modes.release(mapping.id)
    context.changed(EventType.MAPPING_CHANGED, mapping_id=mapping.id, release=info.release)
    return ModeOut(**vars(info))


class ConfirmOut(BaseModel):
    mapping_id: int
    delete_confirm: int


def confirm_deletes(id_or_name: str, context: Context) -> ConfirmOut:
    """Let the deletes the mass-delete guard held back go to the targets."""
    mapping = context.store.get_mapping(id_or_name)
    count = context.store.modes.confirm_deletes(mapping.id)
    context.changed(EventType.MAPPING_CHANGED, mapping_id=mapping.id, delete_confirm=count)
    return ConfirmOut(mapping_id=mapping.id, delete_confirm=count)


class VersionsIn(InputModel):
    keep: int = Field(ge=0, le=1000, description="previous versions kept per file; 0 = off")
    targets: list[str] = Field(
        default_factory=list, description="target servers that keep them; empty = all"
    )


def put_versions(id_or_name: str, body: VersionsIn, context: Context) -> dict[str, object]:
    """Synchronization and backup: keep previous versions of replaced and deleted files on targets."""
    mapping = context.store.get_mapping(id_or_name)
    nodes = [context.store.get_server(t).node_id for t in body.targets]
    context.store.modes.set_versions(mapping.id, body.keep, nodes)
    context.changed(EventType.MAPPING_CHANGED, mapping_id=mapping.id, keep_versions=body.keep)
    return {"mapping_id": mapping.id, "keep": body.keep, "targets": nodes}


class TransferIn(InputModel):
    transfer: Literal["auto", "delta", "whole"] | None = Field(
        description="forced on every link of the mapping, over the link policies; null = each link's policy"
    )


class TransferOut(BaseModel):
    mapping_id: int
    transfer: str | None


def get_transfer(id_or_name: str, context: Context) -> TransferOut:
    mapping = context.store.get_mapping(id_or_name)
    return TransferOut(mapping_id=mapping.id, transfer=context.store.modes.get_transfer(mapping.id))


def put_transfer(id_or_name: str, body: TransferIn, context: Context) -> TransferOut:
    """Force delta or dump copy (or auto) for a mapping; its source's links restart with it."""
    mapping = context.store.get_mapping(id_or_name)
    context.store.modes.set_transfer(mapping.id, body.transfer)
    context.changed(EventType.MAPPING_CHANGED, mapping_id=mapping.id, transfer=body.transfer)
    return TransferOut(mapping_id=mapping.id, transfer=body.transfer)


class TargetPolicyIn(InputModel):
    symlinks: Literal["", "safe", "any"] = Field(
        description='"safe": the targets refuse a symlink that points outside the folder; "any": '
        'they take every link (only if you trust the source); "": each target agent\'s default'
    )
    mode_mask: int = Field(
        ge=0, le=0o777, description="permission bits the targets remove: 2 (o-w), 0 keeps all"
    )


class TargetPolicyOut(BaseModel):
    mapping_id: int
    symlinks: str
    mode_mask: int


def get_target_policy(id_or_name: str, context: Context) -> TargetPolicyOut:
    mapping = context.store.get_mapping(id_or_name)
    symlinks, mode_mask = context.store.modes.get_target_policy(mapping.id)
    return TargetPolicyOut(mapping_id=mapping.id, symlinks=symlinks, mode_mask=mode_mask)


def put_target_policy(id_or_name: str, body: TargetPolicyIn, context: Context) -> TargetPolicyOut:
    """Which symlinks the mapping's targets take and which mode bits they remove."""
    mapping = context.store.get_mapping(id_or_name)
    context.store.modes.set_target_policy(mapping.id, body.symlinks, body.mode_mask)
    context.changed(EventType.MAPPING_CHANGED, mapping_id=mapping.id, symlinks=body.symlinks)
    return TargetPolicyOut(mapping_id=mapping.id, symlinks=body.symlinks, mode_mask=body.mode_mask)
