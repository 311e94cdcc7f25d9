"""N:M jobs: several sources to several targets, as one member mapping per source.

A job is a set of ordinary mappings named `<job>@<source server>`, all with the job's targets and
filters, tagged with the job: each replicates like any mapping (journal, relays, routes, policies,
job log). The tag makes the master send them with `conflict="newest-mtime"` and the job id, so
that their targets hold the union of the sources' trees and resolve two sources writing one path
(transfer/conflicts.py). Conflicts the targets report are kept here per job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    delete,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import _mappings
from relaysync.master.store._joblog import _insert, path_key
from relaysync.master.store._refs import row_id
from relaysync.master.store.models import BIG_ID, NAME, NODE_ID, PATH, Base, Mapping, Server
from relaysync.protocol.messages import CommitReport, MappingSpec

CONFLICT_RULE = "newest-mtime"  # transfer/conflicts.py NEWEST_MTIME
SessionFactory = Callable[[str], AbstractContextManager[Session]]


class NmJobRow(Base):
    __tablename__ = "nm_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    targets: Mapped[list[list[str]]] = mapped_column(JSON, default=list)  # [[node id, path], ...]
    include: Mapped[list[str]] = mapped_column(JSON, default=list)
    exclude: Mapped[list[str]] = mapped_column(JSON, default=list)
    durability: Mapped[str] = mapped_column(String(16), default="safe")
    conflict: Mapped[str] = mapped_column(String(32), default=CONFLICT_RULE)
    created_at: Mapped[float] = mapped_column(Float)


class NmJobMemberRow(Base):
    __tablename__ = "nm_job_members"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    job_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("nm_jobs.id", ondelete="CASCADE"), index=True
    )


class NmConflictRow(Base):
    __tablename__ = "nm_conflicts"
    __table_args__ = (
        UniqueConstraint(
            "mapping_id", "target_node", "seq", "path_key", "at", name="uq_nm_conflict"
        ),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("nm_jobs.id", ondelete="CASCADE"), index=True
    )
    mapping_id: Mapped[int] = mapped_column(Integer)
    target_node: Mapped[str] = mapped_column(NODE_ID)
    seq: Mapped[int] = mapped_column(BIG_ID)
    op: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(PATH)
    path_key: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(16))
    winner_node: Mapped[str] = mapped_column(
        NODE_ID, default=""
    )  # "" = not known (not a member's version)
    loser_node: Mapped[str] = mapped_column(NODE_ID, default="")
    at: Mapped[float] = mapped_column(Float)  # committed_at on the target


@dataclass(frozen=True)
class MemberInfo:
    mapping_id: int
    name: str
    source_node: str
    source_name: str
    source_path: str


@dataclass(frozen=True)
class NmJobInfo:
    id: int
    name: str
    conflict: str
    targets: tuple[tuple[str, str, str], ...]  # (node id, server name, path)
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    durability: str
    members: tuple[MemberInfo, ...]
    created_at: float


@dataclass(frozen=True)
class ConflictInfo:
    id: int
    job_id: int
    job: str
    mapping_id: int
    target_node: str
    seq: int
    op: str
    path: str
    reason: str  # older | tie | rewritten | kind | newer (transfer/conflicts.py)
    winner_node: str
    loser_node: str
    at: float


def check_job_name(name: str) -> None:
    if not name.strip() or len(name) > 200 or name.isdigit() or "@" in name or "/" in name:
        raise ConfigError(
            f"job name {name!r} must be 1-200 characters, not all digits, without '@' or '/'"
        )


class NmJobStore:
    """The N:M jobs, their member mappings, and the conflicts their targets report."""

    def __init__(
        self,
        read: SessionFactory,
        write: SessionFactory,
        bump_epoch: Callable[[Session], None],
        next_mapping_id: Callable[[Session], int],
    ) -> None:
        self._read, self._write = read, write
        self._bump_epoch = bump_epoch
        self._next_mapping_id = next_mapping_id

    def create(
        self,
        *,
        name: str,
        sources: Sequence[tuple[str, str]],
        targets: Sequence[tuple[str, str]],
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        durability: str = "safe",
    ) -> NmJobInfo:
        """Create a job and one member mapping per source, in one transaction.

        Raises:
            ConfigError: a bad name, no source or target, a server that is both source and target,
                a source server twice, or anything create_mapping refuses.
            NotFound: a server that does not exist.
        """
        check_job_name(name)
        if not sources or not targets:
            raise ConfigError("an N:M job needs at least one source and one target")
        with self._write("create N:M job") as session:
            if session.scalar(select(NmJobRow.id).where(NmJobRow.name == name)) is not None:
                raise ConfigError(f"N:M job name {name!r} is already used")
            servers = [_mappings.resolve_server(session, s) for s, _ in sources]
            target_nodes = {_mappings.resolve_server(session, t).node_id for t, _ in targets}
            seen: set[str] = set()
            for server in servers:
                if server.node_id in target_nodes:
                    raise ConfigError(
                        f"server {server.name!r} is both a source and a target of job {name!r}"
                    )
                if server.node_id in seen:
                    raise ConfigError(f"server {server.name!r} is a source of job {name!r} twice")
                seen.add(server.node_id)
            now = time.time()
            drafts = [
                _mappings.MappingDraft(
                    name=f"{name}@{server.name}",
                    source=server.node_id,
                    source_path=path,
                    targets=tuple((str(t), str(p)) for t, p in targets),
                    include=tuple(include),
                    exclude=tuple(exclude),
                    durability=durability,
                )
                for server, (_, path) in zip(servers, sources, strict=True)
            ]
            resolved = [_mappings.validate(session, d, mapping_id=None) for d in drafts]
            job = NmJobRow(
                name=name,
                targets=[list(t) for t in resolved[0].targets],
                include=list(include),
                exclude=list(exclude),
                durability=durability,
                conflict=CONFLICT_RULE,
                created_at=now,
            )
            session.add(job)
            session.flush()
            for r in resolved:
                row = Mapping(id=self._next_mapping_id(session), created_at=now, updated_at=now)
                session.add(row)
                _mappings.apply(session, row, r, now)
                session.add(NmJobMemberRow(mapping_id=row.id, job_id=job.id))
            session.flush()
            self._bump_epoch(session)
            return _info(session, job)

    def list_jobs(self) -> list[NmJobInfo]:
        with self._read("list N:M jobs") as session:
            return [
                _info(session, row)
                for row in session.scalars(select(NmJobRow).order_by(NmJobRow.id))
            ]

    def get(self, id_or_name: int | str) -> NmJobInfo:
        """Raises: NotFound: no such job."""
        with self._read("get N:M job") as session:
            return _info(session, _find(session, id_or_name))

    def delete(self, id_or_name: int | str) -> NmJobInfo:
        """Delete a job and its member mappings (files already on the targets stay).

        Raises:
            NotFound: no such job.
        """
        with self._write("delete N:M job") as session:
            job = _find(session, id_or_name)
            info = _info(session, job)
            ids = [m.mapping_id for m in info.members]
            session.execute(delete(NmJobMemberRow).where(NmJobMemberRow.job_id == job.id))
            session.execute(delete(NmConflictRow).where(NmConflictRow.job_id == job.id))
            if ids:
                session.execute(delete(Mapping).where(Mapping.id.in_(ids)))
            session.delete(job)
            self._bump_epoch(session)
            return info

    def apply(self, session: Session, specs: Sequence[MappingSpec]) -> Iterator[MappingSpec]:
        """Yield the specs, members of a job with its conflict rule and id filled in."""
        members: dict[int, int] = dict(
            session.execute(  # type: ignore[arg-type]
                select(NmJobMemberRow.mapping_id, NmJobMemberRow.job_id).where(
                    NmJobMemberRow.mapping_id.in_([s.mapping_id for s in specs])
                )
            ).all()
        )
        for spec in specs:
            job_id = members.get(spec.mapping_id)
            yield spec if job_id is None else _with_job(spec, job_id)

    def record_conflicts(self, reports: Sequence[CommitReport]) -> list[ConflictInfo]:
        """Keep the conflicts of a batch of commit reports of job members; repeats change nothing.

        Returns the conflicts of the batch (repeats included), for the event bus.
        """
        contested = [(r, rec) for r in reports for rec in r.records if rec.conflict]
        if not contested:
            return []
        with self._write("record conflicts") as session:
            jobs: dict[int, int] = dict(
                session.execute(  # type: ignore[arg-type]
                    select(NmJobMemberRow.mapping_id, NmJobMemberRow.job_id).where(
                        NmJobMemberRow.mapping_id.in_({r.mapping_id for r, _ in contested})
                    )
                ).all()
            )
            names: dict[int, str] = dict(session.execute(select(NmJobRow.id, NmJobRow.name)).all())  # type: ignore[arg-type]
            rows: list[dict[str, Any]] = []
            for report, rec in contested:
                job_id = jobs.get(report.mapping_id)
                if job_id is None:
                    continue
                won = rec.conflict == "newer"
                rows.append(
                    {
                        "job_id": job_id,
                        "mapping_id": report.mapping_id,
                        "target_node": report.target_node,
                        "seq": rec.seq,
                        "op": rec.op[:16],
                        "path": rec.new_path or rec.path,
                        "path_key": path_key(rec.new_path or rec.path),
                        "reason": rec.conflict[:16],
                        "at": rec.committed_at,
                        "winner_node": report.source_node if won else rec.conflict_with,
                        "loser_node": rec.conflict_with if won else report.source_node,
                    }
                )
            if rows:
                session.execute(
                    _insert(session, Base.metadata.tables["nm_conflicts"])
                    .values(rows)
                    .on_conflict_do_nothing()
                )
            return [
                ConflictInfo(
                    id=0,
                    job=names.get(int(r["job_id"]), ""),
                    **{k: v for k, v in r.items() if k != "path_key"},
                )
                for r in rows
            ]

    def conflicts(self, id_or_name: int | str, limit: int = 100) -> list[ConflictInfo]:
        """The job's conflicts, newest first.

        Raises:
            NotFound: no such job.
        """
        with self._read("N:M job conflicts") as session:
            job = _find(session, id_or_name)
            rows = session.scalars(
                select(NmConflictRow)
                .where(NmConflictRow.job_id == job.id)
                .order_by(NmConflictRow.at.desc(), NmConflictRow.id.desc())
                .limit(limit)
            )
            return [
                ConflictInfo(
                    id=r.id,
                    job_id=r.job_id,
                    job=job.name,
                    mapping_id=r.mapping_id,
                    target_node=r.target_node,
                    seq=r.seq,
                    op=r.op,
                    path=r.path,
                    reason=r.reason,
                    winner_node=r.winner_node,
                    loser_node=r.loser_node,
                    at=r.at,
                )
                for r in rows
            ]


def _with_job(spec: MappingSpec, job_id: int) -> MappingSpec:
    return msgspec.structs.replace(spec, conflict=CONFLICT_RULE, job_id=job_id)


def _find(session: Session, id_or_name: int | str) -> NmJobRow:
    row: NmJobRow | None = None
    if (rid := row_id(id_or_name)) is not None:
        row = session.get(NmJobRow, rid)
    if row is None and isinstance(id_or_name, str):
        row = session.scalars(select(NmJobRow).where(NmJobRow.name == id_or_name)).first()
    if row is None:
        raise NotFound("N:M job", id_or_name)
    return row


def _info(session: Session, job: NmJobRow) -> NmJobInfo:
    ids = list(
        session.scalars(select(NmJobMemberRow.mapping_id).where(NmJobMemberRow.job_id == job.id))
    )
    rows = list(session.scalars(select(Mapping).where(Mapping.id.in_(ids)).order_by(Mapping.id)))
    nodes = {r.source_node for r in rows} | {t[0] for t in job.targets}
    names: dict[str, str] = dict(
        session.execute(  # type: ignore[arg-type]
            select(Server.node_id, Server.name).where(Server.node_id.in_(nodes))
        ).all()
    )
    members = tuple(
        MemberInfo(
            mapping_id=r.id,
            name=r.name,
            source_node=r.source_node,
            source_name=names.get(r.source_node, ""),
            source_path=r.source_path,
        )
        for r in rows
    )
    return NmJobInfo(
        id=job.id,
        name=job.name,
        conflict=job.conflict,
        targets=tuple((t[0], names.get(t[0], ""), t[1]) for t in job.targets),
        include=tuple(job.include),
        exclude=tuple(job.exclude),
        durability=job.durability,
        members=members,
        created_at=job.created_at,
    )
