"""Source heads: the highest seq each source says it has journaled, per mapping (`source_heads`).

A mapping's head seq is the higher of this and the newest change row its targets reported, so
that its lag shows while no target reports (every target down), and no target can make the
head look lower than the source says it is.

Each head names the source journal its seq counts in (0024): a recreated journal counts from 1
again, so a head naming another journal than the one noted voids the targets' watermarks of
the old one (store/_journals.py), and the change rows reported before it no longer raise the
head (`journal_since`: the newest row counts only if reported since, so that the head still
reads one row, whatever the older journal left).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping as MappingOf
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from relaysync.master.store._journals import other_journal, retire, void_watermarks
from relaysync.master.store.models import Base, Change, Mapping, SourceHead

logger = logging.getLogger(__name__)

HEADS: Table = Base.metadata.tables["source_heads"]
SELECT_NODES = 500  # source nodes per SELECT: far below any bound on bound parameters
# (mapping id, seq) of an older caller, or (mapping id, seq, journal id): "" names no journal
Head = tuple[int, int] | tuple[int, int, str]


def _heads_upsert(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=["mapping_id", "source_node"],
        set_={
            name: getattr(stmt.excluded, name)
            for name in ("seq", "reported_at", "journal_id", "journal_since")
        },
    )


_HEADS_UPSERT = {
    name: _heads_upsert(dml.insert(HEADS))
    for name, dml in (("sqlite", sqlite), ("postgresql", postgresql))
}


def sourced(session: Session, heads: MappingOf[str, Sequence[Head]]) -> dict[str, list[int]]:
    """Per source node of `heads`, the mapping ids it names that it is the source of now (one
    deleted, given another source meanwhile, or never its own is left out): one SELECT per
    SELECT_NODES sources, whatever the ids say."""
    wanted = {node: {h[0] for h in pairs} for node, pairs in heads.items() if pairs}
    found: dict[str, list[int]] = {node: [] for node in heads}
    for mapping_id, node in _sourced(session, sorted(wanted)):
        if mapping_id in wanted[node]:
            found[node].append(mapping_id)
    return {node: sorted(ids) for node, ids in found.items()}


def record(
    session: Session, heads: MappingOf[str, Sequence[Head]], now: float
) -> dict[str, list[int]]:
    """Set the journal head each source node reports per (mapping id, seq[, journal id]), for
    the mappings it is the source of now (`sourced`), in one upsert. Return, per source node,
    the mapping ids set. The source's word is taken as it is: its journal never goes back, and
    one that does is another journal, which voids what counted in the old one (`_new_journal`)."""
    written = sourced(session, heads)
    taken = {node: set(ids) for node, ids in written.items()}
    noted = _noted(session, sorted(node for node, ids in taken.items() if ids))
    rows = []
    for node in sorted(taken):
        for h in sorted({h[0]: h for h in heads[node]}.values()):
            if h[0] in taken[node]:
                journal = h[2] if len(h) > 2 else ""
                rows.append(_new_journal(session, node, h[0], (h[1], journal), noted, now))
    if rows:
        session.execute(_HEADS_UPSERT[session.get_bind().dialect.name], rows)
    return written


def _noted(session: Session, nodes: Sequence[str]) -> dict[tuple[int, str], tuple[str, float]]:
    """(journal id, journal since) of the heads noted for `nodes`, by (mapping id, node)."""
    noted: dict[tuple[int, str], tuple[str, float]] = {}
    for i in range(0, len(nodes), SELECT_NODES):
        query = select(
            HEADS.c.mapping_id, HEADS.c.source_node, HEADS.c.journal_id, HEADS.c.journal_since
        ).where(HEADS.c.source_node.in_(nodes[i : i + SELECT_NODES]))
        noted.update(
            ((int(m), str(n)), (str(j), float(t))) for m, n, j, t in session.execute(query)
        )
    return noted


def _new_journal(
    session: Session,
    node: str,
    mapping_id: int,
    head: tuple[int, str],
    noted: MappingOf[tuple[int, str], tuple[str, float]],
    now: float,
) -> dict[str, Any]:
    """The row of head (seq, journal id); a journal other than the one noted (the source's was
    recreated) first voids the targets' watermarks of the old one, and the change rows
    reported until now no longer count for the head. "" keeps the journal noted."""
    seq, journal = head
    known, since = noted.get((mapping_id, node), ("", 0.0))
    if other_journal(journal, known):
        void_watermarks(session, mapping_id, node, journal, now, head=seq)
        retire(session, mapping_id, node, known, now)
        since = now
        logger.warning(
            "mapping %s: the source's journal is new (%s, was %s): its head and the targets' "
            "watermarks start again from 0",
            mapping_id,
            journal,
            known,
        )
    return {
        "mapping_id": mapping_id,
        "source_node": node,
        "seq": seq,
        "reported_at": now,
        "journal_id": journal or known,
        "journal_since": since,
    }


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
    """The mapping's head seq: the higher of its source's word and its newest change row, if
    that was reported since the source's journal was first heard (one before is an older
    journal's: its seqs are not the current one's). The newest row alone, found from the top of
    the primary key: one row read, where a walk down to the newest reported since read every
    row of the older journal (561 ms per status call on SQLite with a million)."""
    reported = session.execute(
        select(SourceHead.seq, SourceHead.journal_since).where(
            SourceHead.mapping_id == mapping_id, SourceHead.source_node == source_node
        )
    ).first()
    seq, since = (int(reported[0]), float(reported[1])) if reported is not None else (0, 0.0)
    newest = session.execute(
        select(Change.seq, Change.reported_at)
        .where(Change.mapping_id == mapping_id, Change.source_node == source_node)
        .order_by(Change.seq.desc())
        .limit(1)
    ).first()
    if newest is None or float(newest[1]) < since:
        return seq
    return max(seq, int(newest[0]))
