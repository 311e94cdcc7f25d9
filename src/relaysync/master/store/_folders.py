"""Folder rules for mappings: no system folder, and no two folders of one server that contain
each other where one of them is a target.

A target is made identical to its source (a comparison erases what the source lacks), so on one
server a target inside a source copies itself into the watched tree for ever, and a target around
a source (or around another mapping's target) erases it. Members of one N:M job are the one
exception: they share their target folders by design (transfer/conflicts.py).

A mapping stored before these rules keeps the folders it has: only a folder that is new to the
mapping (created, or changed by an update) is checked, so an old mapping can still be renamed,
disabled or deleted. Agents refuse such folders on their side too (agent/guard.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from relaysync._util.folders import overlap, system_folder
from relaysync.errors import ConfigError
from relaysync.master.store.models import Mapping, MappingTarget, Server

# The N:M job membership table (master/store/_nmjobs.py NmJobMemberRow, which imports this module).
_JOB_MEMBERS = table("nm_job_members", column("mapping_id"), column("job_id"))

NESTING_RULE = (
    "folders of one server must not contain each other where one of them is a target (a target "
    "is made identical to its source: it would copy itself or erase the other folder); only the "
    "members of one N:M job share a target folder"
)


@dataclass(frozen=True, slots=True)
class Folder:
    """One folder a mapping uses on one server."""

    node: str
    path: str
    role: str  # "source" | "target"
    mapping_id: int | None = None  # None: the mapping being validated
    mapping_name: str = ""


def check(
    session: Session,
    *,
    name: str,
    source: tuple[str, str],
    targets: Sequence[tuple[str, str]],
    mapping_id: int | None,
) -> None:
    """Refuse system folders and same-server folders that contain each other.

    Args:
        source: (node id, normalised path) of the mapping's source folder.
        targets: (node id, normalised path) of each target folder.
        mapping_id: the mapping being updated, None for a new one.

    Raises:
        ConfigError: naming the folder and the rule it breaks.
    """
    own = [Folder(source[0], source[1], "source"), *(Folder(n, p, "target") for n, p in targets)]
    stored = _stored(session, mapping_id)
    new = [f for f in own if (f.node, f.path, f.role) not in stored]
    if not new:
        return
    names = _server_names(session, {f.node for f in own})
    for folder in new:
        reason = system_folder(folder.path)
        if reason:
            raise ConfigError(
                f"{folder.role} folder {names[folder.node]}:{folder.path} of mapping "
                f"{name!r}: {reason}"
            )
    for folder in new:
        for other in own:
            if other is not folder and _clash(folder, other, same_job=False):
                raise ConfigError(
                    f"{folder.role} {names[folder.node]}:{folder.path} and the {other.role} "
                    f"folder {other.path} of mapping {name!r} are on one server and "
                    f"contain each other: {NESTING_RULE}"
                )
    others = _others(session, {f.node for f in new}, mapping_id)
    ids: set[int | None] = {o.mapping_id for o in others} | {mapping_id}
    jobs = _jobs(session, ids)
    own_job = jobs.get(mapping_id) if mapping_id is not None else None
    for folder in new:
        for other in others:
            same_job = own_job is not None and jobs.get(other.mapping_id) == own_job
            if _clash(folder, other, same_job=same_job):
                raise ConfigError(
                    f"{folder.role} {names[folder.node]}:{folder.path} of mapping {name!r} "
                    f"and the {other.role} folder {other.path} of mapping "
                    f"{other.mapping_name!r} are on one server and contain each other: "
                    f"{NESTING_RULE}"
                )


def _clash(a: Folder, b: Folder, *, same_job: bool) -> bool:
    if a.node != b.node or "target" not in (a.role, b.role) or not overlap(a.path, b.path):
        return False
    return not (same_job and a.role == b.role == "target" and a.path == b.path)


def _stored(session: Session, mapping_id: int | None) -> set[tuple[str, str, str]]:
    """The folders the mapping has now (node, path, role); empty for a new mapping."""
    if mapping_id is None:
        return set()
    row = session.get(Mapping, mapping_id)
    folders = {(row.source_node, row.source_path, "source")} if row is not None else set()
    for node, path in session.execute(
        select(MappingTarget.node_id, MappingTarget.path).where(
            MappingTarget.mapping_id == mapping_id
        )
    ):
        folders.add((node, path, "target"))
    return folders


def _others(session: Session, nodes: set[str], mapping_id: int | None) -> list[Folder]:
    """Every folder of the other mappings on these servers."""
    skip = -1 if mapping_id is None else mapping_id
    sources = session.execute(
        select(Mapping.id, Mapping.name, Mapping.source_node, Mapping.source_path).where(
            Mapping.source_node.in_(nodes), Mapping.id != skip
        )
    )
    targets = session.execute(
        select(Mapping.id, Mapping.name, MappingTarget.node_id, MappingTarget.path)
        .join(MappingTarget, MappingTarget.mapping_id == Mapping.id)
        .where(MappingTarget.node_id.in_(nodes), Mapping.id != skip)
    )
    return [
        *(Folder(node, path, "source", mid, mname) for mid, mname, node, path in sources),
        *(Folder(node, path, "target", mid, mname) for mid, mname, node, path in targets),
    ]


def _jobs(session: Session, mapping_ids: set[int | None]) -> dict[int | None, int]:
    ids = [i for i in mapping_ids if i is not None]
    if not ids:
        return {}
    rows = session.execute(
        select(_JOB_MEMBERS.c.mapping_id, _JOB_MEMBERS.c.job_id).where(
            _JOB_MEMBERS.c.mapping_id.in_(ids)
        )
    )
    return {int(m): int(j) for m, j in rows}


def _server_names(session: Session, nodes: set[str]) -> dict[str, str]:
    rows = session.execute(select(Server.node_id, Server.name).where(Server.node_id.in_(nodes)))
    names = {node: f"{name!r}" for node, name in rows}
    return {node: names.get(node, node[:16]) for node in nodes}
