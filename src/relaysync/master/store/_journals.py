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

The journal a new one replaced is retired (`retired_journals`): a late report of it (resent
from a target's outbox after a reconnect, read back from the job-log spool) would put the old
journal's seq back on the target's watermark, and its change rows after the reset would raise
the head; it is dropped (`drop_retired`), and a watermark row is never written back in a
retired journal, even by a batch that read the row before the head's write committed
(`may_replace`, in the upsert's WHERE).

A source agent older than the journal ids names none in its heads while its targets' newer
agents name it in their reports (from the link's hello): a target's report in a new journal is
then the first word of it, and switches the head too (`adopt_journals`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, literal_column, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from relaysync.master.store._routing_tables import RecoveryJobRow
from relaysync.master.store.models import Base, Watermark
from relaysync.protocol.messages import CommitReport

logger = logging.getLogger(__name__)

WATERMARKS: Table = Base.metadata.tables["watermarks"]
RETIRED: Table = Base.metadata.tables["retired_journals"]
EXCEPTIONS: Table = Base.metadata.tables["exceptions"]
HEADS: Table = Base.metadata.tables["source_heads"]
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
    session: Session,
    mapping_id: int,
    source_node: str,
    journal_id: str,
    now: float,
    head: int | None = None,
) -> None:
    """The source of the mapping now counts in journal `journal_id`: the targets' watermarks
    in another (or in none named) are the old journal's, and start again from 0 in the new one;
    those a target reported in the new journal already are kept. With the new journal's `head`
    seq, the mapping's running recoveries aim no higher: a goal of the old journal's seqs
    (_router_clock.py `_finish_recoveries`: done at a watermark >= goal) was never reached."""
    session.execute(
        update(Watermark)
        .where(
            Watermark.mapping_id == mapping_id,
            Watermark.source_node == source_node,
            Watermark.journal_id != journal_id,
        )
        .values(seq=0, journal_id=journal_id, updated_at=now)
    )
    if head is not None:
        session.execute(
            update(RecoveryJobRow)
            .where(
                RecoveryJobRow.mapping_id == mapping_id,
                RecoveryJobRow.outcome == "running",
                RecoveryJobRow.goal_seq > head,
            )
            .values(goal_seq=head)
        )


def retire(
    session: Session, mapping_id: int, source_node: str, journal_id: str, now: float
) -> None:
    """Note that the source's journal `journal_id` was replaced by a new one, and close its open
    failures (kept as history): one would stay open for good, and the new journal's change of
    its seq count as failed on that target. Only that journal's: targets report the new journal
    as soon as they reconnect, before the source's head names it, and their failures then are
    the new journal's; those of no journal named ("", older agents, rows from before 0027) say
    nothing of which, and stay as they are."""
    if not journal_id:
        return
    dml = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    row = {"mapping_id": mapping_id, "source_node": source_node, "journal_id": journal_id}
    session.execute(dml.insert(RETIRED).values(**row, retired_at=now).on_conflict_do_nothing())
    c = EXCEPTIONS.c
    closed = session.execute(
        update(EXCEPTIONS)
        .where(
            c.mapping_id == mapping_id,
            c.source_node == source_node,
            c.journal_id == journal_id,
            c.resolved_at.is_(None),
        )
        .values(resolved_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if closed:
        logger.info(
            "mapping %s: %d open failures of the source's replaced journal %s closed",
            *(mapping_id, closed, journal_id),
        )


def drop_retired(session: Session, reports: Sequence[CommitReport]) -> list[CommitReport]:
    """`reports` but those naming a journal that a new one replaced: late (a target's outbox,
    the job-log spool), they say nothing of the new journal."""
    named = {(r.mapping_id, r.source_node, r.journal_id) for r in reports if r.journal_id}
    if not named:
        return list(reports)
    c = RETIRED.c
    mapping_ids = {m for m, _, _ in named}
    retired = {
        (int(m), str(s), str(j))
        for m, s, j in session.execute(
            select(c.mapping_id, c.source_node, c.journal_id).where(
                c.mapping_id.in_(mapping_ids),
                tuple_(c.source_node, c.journal_id).in_({(s, j) for _, s, j in named}),
            )
        )
    }
    if not retired:
        return list(reports)
    kept = [r for r in reports if (r.mapping_id, r.source_node, r.journal_id) not in retired]
    logger.info(
        "dropped %d commit reports of source journals replaced since (late: resent or spooled)",
        len(reports) - len(kept),
        extra={"journals": sorted(retired)},
    )
    return kept


def journal_retired(row: str) -> ColumnElement[bool]:
    """Whether the journal of the row named `row` in an upsert ("excluded", or the table's own
    name for the stored row) is retired. By name: SQLAlchemy does not correlate a subquery with
    `excluded` or with an INSERT's own table, it would join its own."""
    c = RETIRED.c
    return (
        select(c.journal_id)
        .where(
            c.mapping_id == literal_column(f"{row}.mapping_id"),
            c.source_node == literal_column(f"{row}.source_node"),
            c.journal_id == literal_column(f"{row}.journal_id"),
        )
        .exists()
    )


def may_replace(excluded: Any) -> ColumnElement[bool]:
    """The WHERE of the watermark upsert (`excluded`: the row the batch writes): a watermark
    rises in its journal, and another journal replaces it, lower or not, unless that journal is
    retired: a batch that read the row before a new journal's head voided it must not write the
    old journal back. A row of no named journal ("") replaces none named."""
    retired = journal_retired("excluded")
    return or_(
        and_(WATERMARKS.c.seq < excluded.seq, WATERMARKS.c.journal_id == excluded.journal_id),
        and_(WATERMARKS.c.journal_id != excluded.journal_id, excluded.journal_id != "", ~retired),
    )


def adopt_journals(
    session: Session, switched: dict[tuple[int, str], tuple[str, str]], now: float
) -> None:
    """Targets reported a new journal (old, new) of these (mapping, source): a head that names
    no journal (an older source agent: it never will) or none yet takes the new one as its
    own, as a head naming it would: the other targets' watermarks are voided, the old journal
    retired, and the head starts again from 0 (its seq was the old journal's) with the change
    rows reported until now no longer raising it. A head that names a journal switches itself."""
    for (mapping_id, source_node), (old, new) in sorted(switched.items()):
        head = HEADS.c
        named = session.scalar(
            select(head.journal_id).where(
                head.mapping_id == mapping_id, head.source_node == source_node
            )
        )
        if named:
            continue
        void_watermarks(session, mapping_id, source_node, new, now, head=0)
        retire(session, mapping_id, source_node, old, now)
        row = {"mapping_id": mapping_id, "source_node": source_node, "seq": 0}
        values = {"reported_at": now, "journal_id": new, "journal_since": now}
        dml = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        insert = dml.insert(HEADS).values(**row, **values)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["mapping_id", "source_node"],
                set_={"seq": 0, **values},
                where=HEADS.c.journal_id == "",
            )
        )
        logger.warning(
            "mapping %s: a target reports a new source journal (%s, was %s) and the source "
            "names none (an older agent): its head and the targets' watermarks start again "
            "from 0",
            mapping_id,
            new,
            old,
        )
