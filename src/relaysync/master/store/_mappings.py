"""Mapping rules for the store: validation, lookup and conversion of mappings and their targets."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from relaysync._util.folders import normalise
from relaysync.constants import MAX_PATH_BYTES
from relaysync.errors import ConfigError, NotFound, UnknownServer
from relaysync.master.store import _folders, _heads, _modes
from relaysync.master.store._refs import row_id
from relaysync.master.store.models import Mapping, MappingTarget, RevokedNode, Server
from relaysync.master.store.types import MappingInfo, TargetInfo

logger = logging.getLogger(__name__)

MAX_MAPPING_NAME = 255
DURABILITIES = ("safe", "fast")
UPDATABLE = frozenset(
    {"name", "source", "source_path", "targets", "include", "exclude", "durability", "enabled"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingDraft:
    """A mapping as the caller asked for it, before servers are resolved."""

    name: str
    source: str  # server name or node id
    source_path: str
    targets: tuple[tuple[str, str], ...]  # (server name or node id, path)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    durability: str = "safe"
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedMapping:
    """A validated draft: servers resolved to node ids, paths normalised."""

    name: str
    source_node: str
    source_path: str
    targets: tuple[tuple[str, str], ...]  # (node id, path)
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    durability: str
    enabled: bool


def resolve_server(session: Session, ref: str) -> Server:
    """Find a server by node id or name.

    Raises:
        NotFound: no server has that node id or name.
    """
    row = session.scalars(
        select(Server).where(or_(Server.node_id == ref, Server.name == ref))
    ).first()
    if row is None:
        raise NotFound("Server", ref)
    return row


def _mapped_server(session: Session, ref: str, role: str) -> Server:
    """The source or target server `ref` of a mapping.

    Raises:
        UnknownServer: none has that name or node id (the message lists the names there are).
    """
    try:
        return resolve_server(session, ref)
    except NotFound:
        names = sorted(session.scalars(select(Server.name)))
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise UnknownServer(role, ref, shown or "none yet") from None


def check_path(path: str, what: str) -> str:
    """Return the normalised absolute folder path, or raise ConfigError saying what is wrong."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{what} {path!r} must be an absolute path (starting with /)")
    if "\0" in path or len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise ConfigError(f"{what} {path!r} has a NUL byte or is over {MAX_PATH_BYTES} bytes")
    if ".." in path.split("/"):
        raise ConfigError(f"{what} {path!r} must not contain '..'")
    return normalise(path)


def check_patterns(patterns: Iterable[str], what: str) -> tuple[str, ...]:
    """Return the patterns as a tuple once each compiles as a regular expression."""
    if isinstance(patterns, str):
        raise ConfigError(f"{what} must be a list of regular expressions, not one string")
    checked = tuple(patterns)
    for pattern in checked:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ConfigError(
                f"{what} pattern {pattern!r} is not a valid regular expression: {exc}"
            ) from exc
    return checked


def _check_scalars(draft: MappingDraft) -> None:
    if not draft.name.strip() or len(draft.name) > MAX_MAPPING_NAME:
        raise ConfigError(f"mapping name {draft.name!r} must be 1-{MAX_MAPPING_NAME} characters")
    if draft.name.isdigit():
        raise ConfigError(f"mapping name {draft.name!r} must not be all digits (ids are)")
    if draft.durability not in DURABILITIES:
        raise ConfigError(
            f"durability {draft.durability!r} must be one of {', '.join(DURABILITIES)}"
        )
    if not draft.targets:
        raise ConfigError(f"mapping {draft.name!r} needs at least one target")


def _resolve_targets(
    session: Session, draft: MappingDraft, source_node: str, source_path: str
) -> tuple[tuple[str, str], ...]:
    targets: dict[str, str] = {}
    for ref, path in draft.targets:
        server = _mapped_server(session, ref, "target")
        target_path = check_path(path, f"target path on {server.name!r}")
        if server.node_id in targets:
            raise ConfigError(f"server {server.name!r} is a target of {draft.name!r} twice")
        if server.node_id == source_node and target_path == source_path:
            raise ConfigError(f"target {server.name!r}:{target_path} is the source folder itself")
        targets[server.node_id] = target_path
    return tuple(targets.items())


def validate(session: Session, draft: MappingDraft, *, mapping_id: int | None) -> ResolvedMapping:
    """Check a draft against the rules and the servers it names.

    Folder rules (master/store/_folders.py): no system folder, and on one server no two folders
    (of this mapping or another) that contain each other where one is a target.

    Raises:
        ConfigError: a bad name, path, pattern, durability or target, a folder that breaks the
            folder rules, or a name already used.
        NotFound: a source or target server that does not exist.
    """
    _check_scalars(draft)
    clash = session.scalars(select(Mapping.id).where(Mapping.name == draft.name)).first()
    if clash is not None and clash != mapping_id:
        raise ConfigError(f"mapping name {draft.name!r} is already used by mapping {clash}")
    source = _mapped_server(session, draft.source, "source")
    source_path = check_path(draft.source_path, "source path")
    targets = _resolve_targets(session, draft, source.node_id, source_path)
    _folders.check(
        session,
        name=draft.name,
        source=(source.node_id, source_path),
        targets=targets,
        mapping_id=mapping_id,
    )
    return ResolvedMapping(
        name=draft.name,
        source_node=source.node_id,
        source_path=source_path,
        targets=targets,
        include=check_patterns(draft.include, "include"),
        exclude=check_patterns(draft.exclude, "exclude"),
        durability=draft.durability,
        enabled=bool(draft.enabled),
    )


def find_mapping(session: Session, id_or_name: int | str) -> Mapping:
    """Find a mapping by id (an int or a string of digits) or by name.

    Raises:
        NotFound: no such mapping.
    """
    row: Mapping | None = None
    if (rid := row_id(id_or_name)) is not None:
        row = session.get(Mapping, rid)
    if row is None and isinstance(id_or_name, str):
        row = session.scalars(select(Mapping).where(Mapping.name == id_or_name)).first()
    if row is None:
        raise NotFound("Mapping", id_or_name)
    return row


def draft_of(session: Session, row: Mapping) -> MappingDraft:
    """Return the stored mapping as a draft, the base that an update is applied to."""
    targets = session.scalars(select(MappingTarget).where(MappingTarget.mapping_id == row.id))
    return MappingDraft(
        name=row.name,
        source=row.source_node,
        source_path=row.source_path,
        targets=tuple((t.node_id, t.path) for t in targets),
        include=tuple(row.include),
        exclude=tuple(row.exclude),
        durability=row.durability,
        enabled=row.enabled,
    )


def apply(session: Session, row: Mapping, resolved: ResolvedMapping, now: float) -> None:
    """Write a validated mapping into `row` and replace its target rows. A new source starts
    with nothing released: the former source's release progress is of another journal."""
    moved = row.source_node is not None and row.source_node != resolved.source_node
    row.name = resolved.name
    row.source_node = resolved.source_node
    row.source_path = resolved.source_path
    row.include = list(resolved.include)
    row.exclude = list(resolved.exclude)
    row.durability = resolved.durability
    row.enabled = resolved.enabled
    row.updated_at = now
    session.flush()
    if moved:  # the lag figures' head is its own source's (a new mapping has none to drop)
        _heads.keep_only(session, row.id, resolved.source_node)
        _modes.forget_released(session, row.id)
    for old in session.scalars(select(MappingTarget).where(MappingTarget.mapping_id == row.id)):
        session.delete(old)
    session.flush()
    session.add_all(
        MappingTarget(mapping_id=row.id, node_id=node, path=path) for node, path in resolved.targets
    )
    session.flush()


def infos(session: Session, rows: Sequence[Mapping]) -> list[MappingInfo]:
    """Convert mapping rows to MappingInfo, loading their targets and server names in bulk."""
    ids = [row.id for row in rows]
    # As plain rows, not ORM objects: every agent's assignment loads every target of its
    # mappings (50 mappings to 49 targets each: 2,450 rows per agent, for each of 50 agents).
    targets: dict[int, list[tuple[str, str]]] = {i: [] for i in ids}
    for mapping_id, node_id, path in session.execute(
        select(MappingTarget.mapping_id, MappingTarget.node_id, MappingTarget.path)
        .where(MappingTarget.mapping_id.in_(ids))
        .order_by(MappingTarget.node_id)
    ):
        targets[mapping_id].append((node_id, path))
    nodes = {row.source_node for row in rows} | {n for ts in targets.values() for n, _ in ts}
    names: dict[str, str] = {
        node_id: name
        for node_id, name in session.execute(
            select(Server.node_id, Server.name).where(Server.node_id.in_(nodes))
        )
    }
    sources = {row.source_node for row in rows}
    revoked = set(
        session.scalars(select(RevokedNode.node_id).where(RevokedNode.node_id.in_(sources)))
    )
    return [_info(row, targets[row.id], names, revoked) for row in rows]


def _info(
    row: Mapping, targets: list[tuple[str, str]], names: dict[str, str], revoked: set[str]
) -> MappingInfo:
    return MappingInfo(
        id=row.id,
        name=row.name,
        source_node=row.source_node,
        source_name=names.get(row.source_node, ""),
        source_path=row.source_path,
        targets=tuple(
            TargetInfo(node_id=node_id, name=names.get(node_id, ""), path=path)
            for node_id, path in targets
        ),
        include=tuple(row.include),
        exclude=tuple(row.exclude),
        durability=row.durability,  # type: ignore[arg-type]
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        source_revoked=row.source_node in revoked,
    )
