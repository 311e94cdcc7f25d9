"""Source journals in the job log: which journal a head and a watermark count in, and what a new
journal voids.

A source whose journal was recreated (state lost, agent reinstalled) counts from seq 1 again
under a new journal id (watch/journal.py): a seq of the old journal says nothing of the new
one's. A target's commit report names the journal its watermark counts in; one naming another
journal than its row replaces the row's watermark, lower or not (a target reports in order: the
new journal's reports come after the old one's). The source's head naming another journal than
the one noted voids every watermark of that (mapping, source) not in the new journal: a target
down since then has committed none of it. "" (an older agent) matches any journal, as in
purge/ordering.py `same_change`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from relaysync.master.store.models import Base, Watermark
from relaysync.protocol.messages import CommitReport

WATERMARKS: Table = Base.metadata.tables["watermarks"]
Triple = tuple[int, str, str]  # (mapping id, source node, target node)


def other_journal(journal: str, other: str) -> bool:
    """Whether `journal` and `other` name two different journals ("" matches any)."""
    return bool(journal) and bool(other) and journal != other


def current_marks(
    session: Session, reports: Sequence[CommitReport]
) -> dict[Triple, tuple[int, str]]:
    """The stored watermark of each (mapping, source, target) of `reports`, with its journal."""
    triples = {(r.mapping_id, r.source_node, r.target_node) for r in reports}
    rows = session.execute(
        select(
            WATERMARKS.c.mapping_id,
            WATERMARKS.c.source_node,
            WATERMARKS.c.target_node,
            WATERMARKS.c.seq,
            WATERMARKS.c.journal_id,
        ).where(WATERMARKS.c.mapping_id.in_({t[0] for t in triples}))
    )
    return {(m, s, t): (seq, j) for m, s, t, seq, j in rows if (m, s, t) in triples}


def void_watermarks(
    session: Session, mapping_id: int, source_node: str, journal_id: str, now: float
) -> None:
    """The source of the mapping now counts in journal `journal_id`: the targets' watermarks
    in another (or in none named) are the old journal's, and start again from 0 in the new one;
    those a target reported in the new journal already are kept."""
    session.execute(
        update(Watermark)
        .where(
            Watermark.mapping_id == mapping_id,
            Watermark.source_node == source_node,
            Watermark.journal_id != journal_id,
        )
        .values(seq=0, journal_id=journal_id, updated_at=now)
    )
