"""Source heads: the highest seq each source says it has journaled, per mapping (`source_heads`).

A mapping's head seq is the higher of this and the newest change row its targets reported, so
that its lag shows while no target reports (every target down), and no target can make the
head look lower than the source says it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from relaysync.master.store.models import Base, Change, Mapping, SourceHead

HEADS: Table = Base.metadata.tables["source_heads"]


def _heads_upsert(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=["mapping_id", "source_node"],
        set_={"seq": stmt.excluded.seq, "reported_at": stmt.excluded.reported_at},
    )


_HEADS_UPSERT = {
    name: _heads_upsert(dml.insert(HEADS))
    for name, dml in (("sqlite", sqlite), ("postgresql", postgresql))
}


def record(session: Session, source_node: str, heads: Sequence[tuple[int, int]], now: float) -> int:
    """Set the journal head `source_node` reports for each (mapping id, seq) whose mapping it is
    the source of now (one deleted or given another source meanwhile is skipped); return how
    many were set. The source's word is taken as it is: its journal never goes back."""
    wanted = dict(heads)
    if not wanted:
        return 0
    current = session.scalars(
        select(Mapping.id).where(Mapping.id.in_(wanted), Mapping.source_node == source_node)
    ).all()
    rows = [
        {"mapping_id": m, "source_node": source_node, "seq": wanted[m], "reported_at": now}
        for m in sorted(current)
    ]
    if rows:
        session.execute(_HEADS_UPSERT[session.get_bind().dialect.name], rows)
    return len(rows)


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
