"""REST resource /api/nm-jobs: N:M jobs, several sources to several targets (not /api/jobs: the job log)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel
from relaysync.master.events import EventType
from relaysync.master.store._nmjobs import ConflictInfo, NmJobInfo


class LocationIn(InputModel):
    server: str = Field(description="server name or node id")
    path: str = Field(description="absolute folder on that server")


class NmJobIn(InputModel):
    name: str = Field(description="the job's name; members are named <name>@<source server>")
    sources: list[LocationIn] = Field(min_length=1)
    targets: list[LocationIn] = Field(min_length=1)
    include: list[str] = Field(default_factory=list, description="regular expressions; empty = all")
    exclude: list[str] = Field(default_factory=list)
    durability: Literal["safe", "fast"] = "safe"


class MemberOut(BaseModel):
    mapping_id: int
    name: str
    source_node: str
    source_name: str
    source_path: str


class JobTargetOut(BaseModel):
    node_id: str
    name: str
    path: str


class NmJobOut(BaseModel):
    id: int
    name: str
    conflict: str  # the rule: newest-mtime (transfer/conflicts.py)
    targets: list[JobTargetOut]
    include: list[str]
    exclude: list[str]
    durability: str
    members: list[MemberOut]
    created_at: float


class ConflictOut(BaseModel):
    id: int
    job: str
    mapping_id: int
    target_node: str
    seq: int
    op: str
    path: str
    reason: str  # older | tie | rewritten | kind | newer
    winner_node: str
    loser_node: str
    at: float


def _out(info: NmJobInfo) -> NmJobOut:
    return NmJobOut(
        id=info.id,
        name=info.name,
        conflict=info.conflict,
        targets=[JobTargetOut(node_id=n, name=s, path=p) for n, s, p in info.targets],
        include=list(info.include),
        exclude=list(info.exclude),
        durability=info.durability,
        members=[MemberOut(**vars(m)) for m in info.members],
        created_at=info.created_at,
    )


def _conflict(c: ConflictInfo) -> ConflictOut:
    return ConflictOut(
        id=c.id,
        job=c.job,
        mapping_id=c.mapping_id,
        target_node=c.target_node,
        seq=c.seq,
        op=c.op,
        path=c.path,
        reason=c.reason,
        winner_node=c.winner_node,
        loser_node=c.loser_node,
        at=c.at,
    )


def list_nm_jobs(context: Context) -> list[NmJobOut]:
    """Every N:M job with its member mappings."""
    return [_out(j) for j in context.store.nm_jobs.list_jobs()]


def get_nm_job(id_or_name: str, context: Context) -> NmJobOut:
    return _out(context.store.nm_jobs.get(id_or_name))


def create_nm_job(body: NmJobIn, context: Context) -> NmJobOut:
    """Create a job: one member mapping per source, each to every target; agents get them with the next push."""
    info = context.store.nm_jobs.create(
        name=body.name,
        sources=[(s.server, s.path) for s in body.sources],
        targets=[(t.server, t.path) for t in body.targets],
        include=body.include,
        exclude=body.exclude,
        durability=body.durability,
    )
    context.changed(
        EventType.NM_JOB_CREATED,
        job_id=info.id,
        name=info.name,
        mappings=[m.mapping_id for m in info.members],
    )
    return _out(info)


def delete_nm_job(id_or_name: str, context: Context) -> None:
    """Delete a job and its member mappings; files already on the targets stay."""
    info = context.store.nm_jobs.delete(id_or_name)
    context.changed(
        EventType.NM_JOB_DELETED,
        job_id=info.id,
        name=info.name,
        mappings=[m.mapping_id for m in info.members],
    )


def list_conflicts(
    id_or_name: str, context: Context, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[ConflictOut]:
    """The job's conflicts, newest first: two sources wrote one path, and which one won."""
    limit = max(1, min(limit, 10_000))
    return [_conflict(c) for c in context.store.nm_jobs.conflicts(id_or_name, limit)]
