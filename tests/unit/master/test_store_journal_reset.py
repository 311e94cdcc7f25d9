"""Store: a source whose journal was recreated (its seqs count from 1 again under a new journal
id) voids the watermarks and the head that counted in the old one's seqs, so the lag figures
compare seqs of one journal only. An id of "" (an older agent) matches any journal."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event

from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport
from tests.unit.master._reports import SRC, T1, T2, report
from tests.unit.master.test_store_joblog import mapping_id

__all__ = ["mapping_id"]  # the fixture, used by name

OLD, NEW = "1" * 32, "2" * 32


def committed(mid: int, target: str, upto: int, journal: str, first: int = 1) -> CommitReport:
    records = (
        CommitRecord(seq=s, op="file", path=f"f{s}", committed_at=time.time())
        for s in range(first, upto + 1)
    )
    return report(mid, target, upto, *records, journal=journal)


def lags(store: Store, mid: int) -> dict[str, tuple[int, int, int]]:
    return {s.target: (s.watermark, s.highest_seq, s.lag) for s in store.mapping_status(mid)}


def _old_journal_done(store: Store, mid: int) -> None:
    """Both targets committed the old journal's 100 changes; T2 fell behind at 90 first."""
    store.record_commit_reports([committed(mid, T1, 100, OLD), committed(mid, T2, 90, OLD)])
    store.record_source_heads({SRC: [(mid, 100, OLD)]})
    assert lags(store, mid) == {T1: (100, 100, 0), T2: (90, 100, 10)}


def test_a_new_journal_reported_by_a_target_first_then_by_the_source(
    store: Store, mapping_id: int
) -> None:
    """The usual order: the recreated source streams its new journal to the targets, which
    commit and report it before the source's next figures name it. Before, every figure kept
    the old journal's seqs: T1 showed watermark 100 and no lag while 3 of the new journal's 8
    changes were not on it, and T2 (down) a lag of 10 for changes of a journal gone."""
    _old_journal_done(store, mapping_id)
    store.record_commit_reports([committed(mapping_id, T1, 5, NEW)])
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})
    assert lags(store, mapping_id) == {T1: (5, 8, 3), T2: (0, 8, 8)}
    assert {w.target: w.seq for w in store.watermarks(mapping_id)} == {T1: 5, T2: 0}
    store.record_commit_reports([committed(mapping_id, T2, 8, NEW)])  # T2 back
    store.record_commit_reports([committed(mapping_id, T1, 8, NEW, first=6)])
    assert lags(store, mapping_id) == {T1: (8, 8, 0), T2: (8, 8, 0)}


def test_a_new_journal_named_by_the_source_first(store: Store, mapping_id: int) -> None:
    """The source's figures name the new journal before any target reports it: every target
    has committed nothing of it; their next reports count from there."""
    _old_journal_done(store, mapping_id)
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})
    assert lags(store, mapping_id) == {T1: (0, 8, 8), T2: (0, 8, 8)}
    store.record_commit_reports([committed(mapping_id, T1, 6, NEW)])
    assert lags(store, mapping_id) == {T1: (6, 8, 2), T2: (0, 8, 8)}
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})  # the same journal: nothing voided
    assert lags(store, mapping_id)[T1] == (6, 8, 2)


def test_an_unnamed_journal_matches_any(store: Store, mapping_id: int) -> None:
    """An older agent names no journal (""): its head and reports void nothing and are taken
    as before (a head as it is, a watermark only raised)."""
    _old_journal_done(store, mapping_id)
    store.record_source_heads({SRC: [(mapping_id, 120, "")]})
    store.record_commit_reports([committed(mapping_id, T2, 80, "")])  # lowers nothing
    assert lags(store, mapping_id) == {T1: (100, 120, 20), T2: (90, 120, 30)}
    store.record_source_heads({SRC: [(mapping_id, 130)]})  # (mapping id, seq): no journal
    store.record_commit_reports([committed(mapping_id, T1, 130, OLD, first=101)])
    assert lags(store, mapping_id) == {T1: (130, 130, 0), T2: (90, 130, 40)}


def test_a_late_report_of_the_old_journal_changes_nothing(store: Store, mapping_id: int) -> None:
    """T1's report of the old journal, resent from its outbox after a reconnect or read back
    from the job-log spool, comes after the source's head named the new journal. Before, it put
    the old journal's seq back on T1's watermark ((100, 9, 0): no lag, none of the new journal
    on it), and its change rows past the old journal's raised the head (T2 showed a lag of 104
    for a journal of 9)."""
    _old_journal_done(store, mapping_id)
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})
    store.record_commit_reports([committed(mapping_id, T1, 104, OLD, first=95)])  # late, old
    store.record_source_heads({SRC: [(mapping_id, 9, NEW)]})
    assert lags(store, mapping_id) == {T1: (0, 9, 9), T2: (0, 9, 9)}
    store.record_commit_reports([committed(mapping_id, T1, 9, NEW)])
    assert lags(store, mapping_id) == {T1: (9, 9, 0), T2: (0, 9, 9)}


def test_a_batch_does_not_write_back_a_journal_voided_while_it_ran(
    store: Store, mapping_id: int
) -> None:
    """PostgreSQL (read committed): the source's head in a new journal commits while a batch
    of T1's old-journal reports is being written, after the batch read T1's watermark. Before,
    the batch's upsert wrote (101, old journal) over the voided row (0, new journal). SQLite
    serializes writers: no head can land mid-batch there."""
    if not store.url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers: no head write lands mid-batch")
    _old_journal_done(store, mapping_id)
    other = Store(store.url)
    landed: list[bool] = []

    def head_mid_batch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO watermarks") and not landed:
            landed.append(True)
            other.record_source_heads({SRC: [(mapping_id, 8, NEW)]})

    engine = store._engine  # noqa: SLF001 - the hook must run inside the batch's transaction
    event.listen(engine, "before_cursor_execute", head_mid_batch)
    try:
        store.record_commit_reports([committed(mapping_id, T1, 101, OLD, first=101)])
    finally:
        event.remove(engine, "before_cursor_execute", head_mid_batch)
        other.close()
    assert landed
    assert lags(store, mapping_id) == {T1: (0, 8, 8), T2: (0, 8, 8)}


ROWS = 20_000  # change rows of the old journal: what a head query that walks them would read


def _rows_read(store: Store, call: Callable[[], object]) -> int:
    """The work of the statements on `changes` that `call` runs: on SQLite its virtual
    machine's instructions in thousands (a progress handler), on PostgreSQL the rows their plans
    read (EXPLAIN ANALYZE of each again: rows out and rows filtered away), planned with the
    statistics autovacuum keeps."""
    engine = store._engine  # noqa: SLF001 - the hook must see the store's own statements
    if engine.dialect.name == "postgresql":  # plans as with the statistics autovacuum keeps
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE changes")
            conn.commit()
    seen: list[tuple[str, Any]] = []
    work = [0]

    def count() -> int:
        work[0] += 1
        return 0

    def hook(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if engine.dialect.name == "sqlite":
            conn.connection.driver_connection.set_progress_handler(count, 1000)
        elif "FROM changes" in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", hook)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.connection.driver_connection.set_progress_handler(None, 0)
        return work[0]
    with engine.connect() as conn:
        for statement, params in seen:
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
            work[0] += _plan_rows(cursor.fetchone()[0][0]["Plan"])
    return work[0]


def _plan_rows(node: dict[str, Any]) -> int:
    rows = node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
    return int(rows) + sum(_plan_rows(child) for child in node.get("Plans", ()))


def test_the_head_after_a_reset_reads_no_old_change_rows(store: Store, mapping_id: int) -> None:
    """After a reset the head reads the newest change row only (from the top of the primary
    key), not every row down to the newest reported since: that walked the old journal's rows
    (SQLite: 561 ms per status call with a million; here, 20,000: 120 thousand instructions
    before, under 1 thousand now). PostgreSQL's planner took the reported_at index instead (with
    statistics): it stays bounded."""
    store.record_commit_reports([committed(mapping_id, T1, ROWS, OLD)])
    store.record_source_heads({SRC: [(mapping_id, ROWS, OLD)]})
    before = _rows_read(store, lambda: store.mapping_status(mapping_id))
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})
    assert lags(store, mapping_id) == {T1: (0, 8, 8), T2: (0, 8, 8)}
    after = _rows_read(store, lambda: store.mapping_status(mapping_id))
    assert after <= max(2 * before, 50), (before, after)
    assert after < ROWS // 100, (before, after)


def test_a_source_agent_naming_no_journal_takes_the_targets_word_for_it(
    store: Store, mapping_id: int
) -> None:
    """A rolling upgrade: the source agent is older (its heads name no journal), the targets'
    newer (their reports name the journal). The source's journal is recreated: T1's report in
    the new journal is the first word of it and switches the head as a head naming it would.
    Before, the head was never voided and the old journal's change rows kept raising it: T1
    (8, 100, 92) with all of the new journal on it, T2 (90, 100, 10) for a journal gone."""
    store.record_commit_reports([committed(mapping_id, T1, 100, OLD)])
    store.record_commit_reports([committed(mapping_id, T2, 90, OLD)])
    store.record_source_heads({SRC: [(mapping_id, 100)]})
    store.record_commit_reports([committed(mapping_id, T1, 8, NEW)])
    assert lags(store, mapping_id) == {T1: (8, 0, 0), T2: (0, 0, 0)}
    store.record_source_heads({SRC: [(mapping_id, 8)]})  # still naming none: NEW kept
    assert lags(store, mapping_id) == {T1: (8, 8, 0), T2: (0, 8, 8)}
    store.record_commit_reports([committed(mapping_id, T2, 95, OLD, first=91)])  # late
    store.record_commit_reports([committed(mapping_id, T2, 6, NEW)])
    assert lags(store, mapping_id) == {T1: (8, 8, 0), T2: (6, 8, 2)}


def test_a_running_recovery_aims_at_the_new_journal(store: Store, mapping_id: int) -> None:
    """A recovery of T2 started before the reset aims at T1's watermark then, a seq of the old
    journal; the router finishes it at a watermark >= its goal. Before, the goal stayed 100 and
    T2, with all of the new journal (8), never finished its recovery."""
    _old_journal_done(store, mapping_id)
    job = store.routing.start_recovery(mapping_id, T2, "manual", time.time())
    assert job.goal_seq == 100
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})
    [rebased] = store.routing.running_recoveries()
    assert (rebased.id, rebased.goal_seq) == (job.id, 8)
    store.record_source_heads({SRC: [(mapping_id, 9, NEW)]})  # the same journal: as it was
    assert [j.goal_seq for j in store.routing.running_recoveries()] == [8]


def test_a_marker_of_reports_dropped_in_the_old_journal_moves_no_watermark(
    store: Store, mapping_id: int
) -> None:
    """A target's queue dropped reports of the old journal; its marker (agent/_lost_reports.py)
    comes after the new journal's reports, before the source's head names the new journal.
    Before, it carried the old journal's id and highest dropped seq: taken for a switch back,
    it set T1's watermark to (120, old), which the head then voided to 0 (T1 had 5 of the new
    journal); and it counted as a catch-up file. Now it names no journal, at watermark 0."""
    from relaysync.agent._lost_reports import LostReports

    _old_journal_done(store, mapping_id)
    store.record_commit_reports([committed(mapping_id, T1, 5, NEW)])
    lost = LostReports(None)
    lost.note(committed(mapping_id, T1, 120, OLD, first=101))  # dropped on T1's queue
    [marker] = lost.take()
    store.record_commit_reports([marker])
    assert {w.target: w.seq for w in store.watermarks(mapping_id)}[T1] == 5
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})
    assert lags(store, mapping_id) == {T1: (5, 8, 3), T2: (0, 8, 8)}
    assert store.catchup(mapping_id) == []


def test_a_marker_of_dropped_reports_leaves_a_failed_root_erase_open(
    store: Store, mapping_id: int
) -> None:
    """The marker is an ok record of seq 0 at the root (path ""), as a comparison's Erase of
    the root is: found in review, it closed that erase's real failure."""
    from relaysync.agent._lost_reports import LostReports

    failed = CommitRecord(seq=0, op="erase", path="", ok=False, error="EACCES")
    store.record_commit_reports(
        [
            CommitReport(
                mapping_id=mapping_id,
                source_node=SRC,
                target_node=T1,
                watermark=0,
                records=(failed,),
                journal_id=OLD,
            )
        ]
    )
    lost = LostReports(None)
    lost.note(committed(mapping_id, T1, 3, OLD))
    store.record_commit_reports(lost.take())
    assert [(e.seq, e.path) for e in store.exceptions(mapping_id, open_only=True)] == [(0, "")]
