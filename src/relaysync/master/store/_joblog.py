"""The job log: commit reports folded into change rows, watermarks, advances, exceptions and counters.

One change row per (mapping, source, seq, journal) however many targets report it
(_joblog_changes.py), and per (mapping, source, target) only a watermark, its advances and the few exceptions (DESIGN.md "Bookkeeping
that scales"). A whole batch of reports is written in one transaction with a handful of
statements, so that 10,000 records cost milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BindParameter, Table, and_, bindparam, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from relaysync.master.store._joblog_changes import ChangeRows, write_changes
from relaysync.master.store._joblog_supersede import Commits, resolve_moot
from relaysync.master.store._journals import (
    adopt_journals,
    current_marks,
    drop_retired,
    journal_retired,
    may_replace,
    other_journal,
)
from relaysync.master.store.models import Base, Mapping, Server, path_key
from relaysync.protocol.messages import LOST_OP, CommitRecord, CommitReport

logger = logging.getLogger(__name__)

WATERMARKS: Table = Base.metadata.tables["watermarks"]
ADVANCES: Table = Base.metadata.tables["watermark_advances"]
EXCEPTIONS: Table = Base.metadata.tables["exceptions"]
CATCHUP: Table = Base.metadata.tables["catchup"]

Triple = tuple[int, str, str]  # (mapping id, source node, target node)


def _insert(session: Session, table: Table) -> Any:
    """INSERT with ON CONFLICT support for the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


OutcomeKey = tuple[int, str, str, int, str]  # (mapping id, source, target, seq, path)


@dataclass
class _Batch:
    """Everything a batch of reports will write, keyed so that repeats collapse."""

    now: float
    # (mapping, source, target) with exceptions open before the batch: only their commits can
    # resolve one, so only theirs are noted in `outcomes` (and those of keys failed in the batch)
    open_triples: set[Triple] = field(default_factory=set)
    changes: ChangeRows = field(default_factory=ChangeRows)
    # a failure's row, or (a str) a commit, of that source journal ("": not named)
    outcomes: dict[OutcomeKey, dict[str, Any] | str] = field(default_factory=dict)
    catchup: dict[Triple, list[int]] = field(default_factory=dict)
    watermarks: dict[Triple, int] = field(default_factory=dict)
    journals: dict[Triple, str] = field(default_factory=dict)  # the journal each counts in
    switched: dict[tuple[int, str], tuple[str, str]] = field(default_factory=dict)  # old, new
    advances: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # target node id -> server name
    commits: Commits = field(default_factory=Commits)  # what may make failures moot
    failed_triples: set[Triple] = field(default_factory=set)  # with a failure in the batch


@dataclass
class _Figures:
    """What one report's committed files add to its watermark advance.

    Latency (committed_at - changed_at, summed) leaves out records without a change time
    (catch-up work, agents that predate it). The two times come from different clocks when
    source and target are different machines: a negative difference (a target clock behind the
    source's) counts as 0.
    """

    files: int = 0
    wire_bytes: int = 0
    duration_ms: float = 0.0
    latency_ms: float = 0.0
    latency_files: int = 0
    catchup_files: int = 0  # seq 0: work outside the journal, counted per target
    catchup_bytes: int = 0


def record(session: Session, reports: Sequence[CommitReport], now: float) -> None:
    """Write a batch of commit reports; repeats of a report change nothing.

    Rows are written in key order, so that concurrent batches on PostgreSQL take their row
    locks in the same order and cannot deadlock."""
    reports = drop_retired(session, _known(session, reports))
    if not reports:
        return
    batch = _Batch(now=now)
    current = current_marks(session, reports)
    batch.watermarks = {triple: seq for triple, (seq, _) in current.items()}
    batch.journals = {triple: journal for triple, (_, journal) in current.items()}
    batch.names = _target_names(session, reports)
    batch.open_triples = _open_triples(session, {r.mapping_id for r in reports})
    for report in reports:
        _fold(batch, report)
    # before the change rows: a head that names a new journal from now on, they are its rows
    # (before, its first batch took the old journal's rows of no journal named for its own);
    # before the watermarks: it voids the others
    adopt_journals(session, batch.switched, now)
    write_changes(session, batch.changes)
    _write_watermarks(session, batch)
    _write_outcomes(session, batch)
    _write_catchup(session, batch)


def _known(session: Session, reports: Sequence[CommitReport]) -> list[CommitReport]:
    """Drop reports of mappings that no longer exist (deleted while the report was in flight)."""
    ids = {r.mapping_id for r in reports}
    known = set(session.scalars(select(Mapping.id).where(Mapping.id.in_(ids))))
    if ids - known:
        logger.info(
            "dropped commit reports of deleted mappings", extra={"mappings": sorted(ids - known)}
        )
    return [r for r in reports if r.mapping_id in known]


def _target_names(session: Session, reports: Sequence[CommitReport]) -> dict[str, str]:
    nodes = {r.target_node for r in reports if r.route}
    if not nodes:
        return {}
    rows = session.execute(select(Server.node_id, Server.name).where(Server.node_id.in_(nodes)))
    return {node: name for node, name in rows}


def _route(batch: _Batch, report: CommitReport) -> str:
    """The route of a report as the job log keeps it: names joined by ">", the target last."""
    if not report.route:
        return ""  # an agent that does not say: unknown (not necessarily direct)
    return ">".join((*report.route, batch.names.get(report.target_node, report.target_node)))


def _fold(batch: _Batch, report: CommitReport) -> None:
    triple = (report.mapping_id, report.source_node, report.target_node)
    records = report.records
    batch.changes.fold(report, batch.now)
    figures = _figures(records)
    if figures.files < len(records) or batch.outcomes or triple in batch.open_triples:
        direct = len(report.route) == 1
        _fold_outcomes(batch, triple, records, direct=direct, journal=report.journal_id)
    if figures.catchup_files:
        counters = batch.catchup.setdefault(triple, [0, 0])
        counters[0] += figures.catchup_files
        counters[1] += figures.catchup_bytes
    if other_journal(report.journal_id, old := batch.journals.get(triple, "")):
        batch.watermarks.pop(triple, None)  # the source's new journal: from 0 in it (_journals)
        batch.switched[triple[:2]] = (old, report.journal_id)
    if report.journal_id:
        batch.journals[triple] = report.journal_id
    _fold_watermark(batch, triple, report.watermark, figures, _route(batch, report))


def _figures(records: Sequence[CommitRecord]) -> _Figures:
    """The figures of the committed records (one pass, in locals: it runs per record)."""
    files = wire_bytes = latency_files = catchup_files = catchup_bytes = 0
    duration_ms = latency_ms = 0.0
    for rec in records:
        if not rec.ok or rec.op == LOST_OP:  # an agent's marker of dropped reports: no file
            continue
        files += 1
        wire_bytes += rec.wire_bytes
        duration_ms += rec.duration_ms
        changed_at, committed_at = rec.changed_at, rec.committed_at
        if changed_at > 0 and committed_at > 0:
            latency_files += 1
            latency = (committed_at - changed_at) * 1000.0
            if latency > 0:
                latency_ms += latency
        if rec.seq == 0:
            catchup_files += 1
            catchup_bytes += rec.wire_bytes
    return _Figures(
        files, wire_bytes, duration_ms, latency_ms, latency_files, catchup_files, catchup_bytes
    )


def _fold_outcomes(
    batch: _Batch, triple: Triple, records: Sequence[CommitRecord], *, direct: bool, journal: str
) -> None:
    """Failures, and the commits that may resolve one: of a triple with exceptions open, or of
    a key that failed earlier in the batch (the last outcome of a key is the one written), and
    the commits that may make a failure of their path moot (_joblog_supersede.py): only those
    sent by the source itself (`direct`), not through a relay, which may send its own version
    of a path it could not apply (or by an agent that does not say its route). A failure notes
    the source `journal` its seq counts in (_journals.py `retire` closes a replaced one's)."""
    outcomes, commits = batch.outcomes, batch.commits
    for rec in records:
        if rec.op == LOST_OP:  # a marker of dropped reports (seq 0, the root): no outcome
            continue
        key = (*triple, rec.seq, rec.path)  # hashed only where it is written
        order = commits.next_order()
        if not rec.ok:
            _fold_failure(batch, key, rec, journal)
            commits.failed(triple, rec.seq, rec.path, order)
            batch.failed_triples.add(triple)
            continue
        note_ok = triple in batch.open_triples or triple in batch.failed_triples
        if note_ok and direct:
            commits.committed(triple, rec.path, rec.op, rec.seq, order, rec.conflict)
        if note_ok or key in outcomes:
            outcomes[key] = journal


def _fold_failure(batch: _Batch, key: OutcomeKey, rec: CommitRecord, journal: str) -> None:
    previous = batch.outcomes.get(key)
    if not isinstance(previous, dict):  # none, or a commit earlier in the batch
        previous = None
    attempts = previous["attempts"] + 1 if previous else 1
    if not journal and previous:  # "": not known, not none (`_kept_journal`)
        journal = previous["journal_id"]
    batch.outcomes[key] = {
        "mapping_id": key[0],
        "source_node": key[1],
        "target_node": key[2],
        "seq": key[3],
        "path": rec.path,
        "path_key": path_key(key[4]),
        "error": rec.error or "failed",
        "at": batch.now,
        "attempts": attempts,
        "resolved_at": None,
        "op": rec.op,
        "journal_id": journal,
    }


def _fold_watermark(
    batch: _Batch, triple: Triple, watermark: int, figures: _Figures, route: str
) -> None:
    current = batch.watermarks.get(triple)
    if current is not None and watermark <= current:
        return
    batch.watermarks[triple] = max(watermark, 0)
    if watermark > (current or 0):
        batch.advances.append(
            {
                "mapping_id": triple[0],
                "source_node": triple[1],
                "target_node": triple[2],
                "from_seq": current or 0,
                "to_seq": watermark,
                "at": batch.now,
                "files": figures.files,
                "wire_bytes": figures.wire_bytes,
                "duration_ms": figures.duration_ms,
                "route": route,
                "latency_ms": figures.latency_ms,
                "latency_files": figures.latency_files,
            }
        )


def _write_watermarks(session: Session, batch: _Batch) -> None:
    advanced = {(a["mapping_id"], a["source_node"], a["target_node"]) for a in batch.advances}
    rows = [
        {
            "mapping_id": m,
            "source_node": s,
            "target_node": t,
            "seq": seq,
            "updated_at": batch.now,
            "journal_id": batch.journals.get((m, s, t), ""),
        }
        for (m, s, t), seq in sorted(batch.watermarks.items())
    ]
    if not rows:
        return
    session.execute(_WATERMARKS_UPSERT[session.get_bind().dialect.name], rows)
    if advanced:
        session.execute(ADVANCES.insert(), batch.advances)


def _watermarks_upsert(stmt: Any) -> Any:
    return stmt.on_conflict_do_update(
        index_elements=["mapping_id", "source_node", "target_node"],
        set_={
            "seq": stmt.excluded.seq,
            "updated_at": stmt.excluded.updated_at,
            "journal_id": stmt.excluded.journal_id,
        },
        # never decreases, even under concurrent batches, but in another journal (_journals)
        where=may_replace(stmt.excluded),
    )


_WATERMARKS_UPSERT = {
    name: _watermarks_upsert(dml.insert(WATERMARKS))
    for name, dml in (("sqlite", sqlite), ("postgresql", postgresql))
}


def _write_outcomes(session: Session, batch: _Batch) -> None:
    failed = [(key, row) for key, row in batch.outcomes.items() if isinstance(row, dict)]
    failures = [row for _, row in sorted(failed, key=lambda kv: kv[0])]
    if failures:
        stmt = _insert(session, EXCEPTIONS)
        stmt = stmt.on_conflict_do_update(
            index_elements=["mapping_id", "source_node", "target_node", "seq", "path_key"],
            set_={
                "error": stmt.excluded.error,
                "at": stmt.excluded.at,
                "attempts": EXCEPTIONS.c.attempts + stmt.excluded.attempts,
                "resolved_at": None,
                "op": stmt.excluded.op,
                "journal_id": _kept_journal(stmt.excluded),
            },
        )
        session.execute(stmt, failures)
    _resolve(session, batch)
    moot = resolve_moot(session, batch.commits, batch.now)
    if moot:
        logger.debug("job log: %d failures made moot by later commits of their paths", moot)


def _kept_journal(excluded: Any) -> Any:
    """The journal of a failure upserted on a stored row: the one reported (a seq failing again
    in a new journal), but a report of none named (an older agent on the way: "" is not known,
    not none) keeps the row's, unless that journal was replaced since (`retire` closed the row,
    and a report of it would be dropped): the failure is then of no journal known."""
    retired = journal_retired(EXCEPTIONS.name)
    kept = EXCEPTIONS.c.journal_id
    return case((and_(excluded.journal_id == "", ~retired), kept), else_=excluded.journal_id)


def _resolve(session: Session, batch: _Batch) -> None:
    """Close the open exceptions of changes that have now committed on their target: a failure
    of the same seq and path in the same source journal ("" on either side matches, as for
    watermarks: an older agent names none). Another journal's change at that seq is another
    change: its commit leaves the failure open (`retire` closes it with its journal)."""
    open_triples = batch.open_triples  # as before the batch: see _Batch
    params = [
        {"m": k[0], "s": k[1], "t": k[2], "q": k[3], "p": path_key(k[4]), "j": row}
        for k, row in batch.outcomes.items()
        if isinstance(row, str) and k[:3] in open_triples
    ]
    if not params:
        return
    c = EXCEPTIONS.c
    journal: BindParameter[str] = bindparam("j")
    stmt = (
        update(EXCEPTIONS)
        .where(
            and_(
                c.mapping_id == bindparam("m"),
                c.source_node == bindparam("s"),
                c.target_node == bindparam("t"),
                c.seq == bindparam("q"),
                c.path_key == bindparam("p"),
                c.resolved_at.is_(None),
                or_(c.journal_id == journal, c.journal_id == "", journal == ""),
            )
        )
        .values(resolved_at=batch.now)
    )
    session.connection().execute(stmt, params)


def _open_triples(session: Session, mapping_ids: set[int]) -> set[Triple]:
    if not mapping_ids:
        return set()
    c = EXCEPTIONS.c
    rows = session.execute(
        select(c.mapping_id, c.source_node, c.target_node)
        .where(c.mapping_id.in_(mapping_ids), c.resolved_at.is_(None))
        .distinct()
    )
    return set(rows)


def _write_catchup(session: Session, batch: _Batch) -> None:
    rows = [
        {
            "mapping_id": m,
            "source_node": s,
            "target_node": t,
            "files": f,
            "bytes": b,
            "updated_at": batch.now,
        }
        for (m, s, t), (f, b) in sorted(batch.catchup.items())
    ]
    if not rows:
        return
    stmt = _insert(session, CATCHUP)
    stmt = stmt.on_conflict_do_update(
        index_elements=["mapping_id", "source_node", "target_node"],
        set_={
            "files": CATCHUP.c.files + stmt.excluded.files,
            "bytes": CATCHUP.c.bytes + stmt.excluded.bytes,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    session.execute(stmt, rows)
