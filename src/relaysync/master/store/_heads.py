"""Source heads: the highest seq each source says it has journaled, per mapping (`source_heads`).

A mapping's head seq is the higher of this and the newest change row its targets reported, so
that its lag shows while no target reports (every target down), and no target can make the
head look lower than the source says it is.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingOf
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from relaysync.master.store.models import Base, Change, Mapping, SourceHead

HEADS: Table = Base.metadata.tables["source_heads"]
SELECT_NODES = 500  # source nodes per SELECT: far below any bound on bound parameters


def _heads_upsert(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=["mapping_id", "source_node"],
        set_={"seq": stmt.excluded.seq, "reported_at": stmt.excluded.reported_at},
    )


_HEADS_UPSERT = {
    name: _heads_upsert(dml.insert(HEADS))
    for name, dml in (("sqlite", sqlite), ("postgresql", postgresql))
}


def sourced(
    session: Session, heads: MappingOf[str, Sequence[tuple[int, int]]]
) -> dict[str, list[int]]:
    """Per source node of `heads`, the mapping ids it names that it is the source of now (one
    deleted, given another source meanwhile, or never its own is left out): one SELECT per
    SELECT_NODES sources, whatever the ids say."""
    wanted = {node: {m for m, _ in pairs} for node, pairs in heads.items() if pairs}
    found: dict[str, list[int]] = {node: [] for node in heads}
    for mapping_id, node in _sourced(session, sorted(wanted)):
        if mapping_id in wanted[node]:
            found[node].append(mapping_id)
    return {node: sorted(ids) for node, ids in found.items()}


def record(
    session: Session, heads: MappingOf[str, Sequence[tuple[int, int]]], now: float
) -> dict[str, list[int]]:
    """Set the journal head each source node reports per (mapping id, seq), for the mappings
    it is the source of now (`sourced`), in one upsert. Return, per source node, the mapping
    ids set. The source's word is taken as it is: its journal never goes back."""
    written = sourced(session, heads)
    taken = {node: set(ids) for node, ids in written.items()}
    rows = [
        {"mapping_id": m, "source_node": node, "seq": seq, "reported_at": now}
        for node in sorted(taken)
        for m, seq in sorted(dict(heads[node]).items())
        if m in taken[node]
    ]
    if rows:
        session.execute(_HEADS_UPSERT[session.get_bind().dialect.name], rows)
    return written


def _sourced(session: Session, nodes: Sequence[str]) -> list[tuple[int, str]]:
    """(mapping id, source node) of every mapping one of `nodes` is the source of: bounded by
    the mappings there are, not by the ids a report names."""
    found: list[tuple[int, str]] = []
    for i in range(0, len(nodes), SELECT_NODES):
        query = select(Mapping.id, Mapping.source_node).where(
            Mapping.source_node.in_(nodes[i : i + SELECT_NODES])
        )
        found.extend((int(m), str(n)) for m, n in session.execute(query))
    return found


def keep_only(session: Session, mapping_id: int, source_node: str) -> None:
    """Delete the heads of a mapping's former sources: a source that comes back later starts
    from its next report, not from the head it had then. (A head write that read the mapping
    before this change committed may still leave the former source's row: it is never read
    while that node is not the source, and its next report overwrites it if it is again.)"""
    session.execute(
        delete(SourceHead).where(
            SourceHead.mapping_id == mapping_id, SourceHead.source_node != source_node
        )
    )


def head_seq(session: Session, mapping_id: int, source_node: str) -> int:
    """The mapping's head seq: the higher of its source's word and its newest change row."""
    reported = session.scalar(
        select(SourceHead.seq).where(
            SourceHead.mapping_id == mapping_id, SourceHead.source_node == source_node
        )
    )
    newest = session.scalar(
        select(func.max(Change.seq)).where(
            Change.mapping_id == mapping_id, Change.source_node == source_node
        )
    )
    return max(int(reported or 0), int(newest or 0))
