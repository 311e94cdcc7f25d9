"""Store: an exception row keeps the source journal its failure was reported in, and the job
log's figures (`committed_count`, `change_states`) match a failure to a change of its own
journal only ("" matches any), as they match watermarks.

Before: a repeat failure reported with no journal named (an older relay or source on the path)
set the row's journal to "", so the head switch left it open for good and the new journal's
change of that seq counted as failed on its target; a failure of one journal counted against
the other journal's change of the same seq (committed 0 of 1 in the job log, 'failed' in the
change's state) until the head switched; and the API did not show the row's journal.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport
from tests.unit.master.test_store_exception_journals import NEW, OLD
from tests.unit.master.test_store_joblog import SRC, T1, T2, mapping_id

__all__ = ["mapping_id"]  # the fixture, used by name


def report(
    mid: int,
    target: str,
    journal: str,
    watermark: int,
    ok: range,
    failed: tuple[int, ...] = (),
    *,
    under: str = "",
) -> CommitReport:
    """`target` committed the seqs `ok` of `journal` and failed `failed` (path "<under>f<seq>":
    a commit of the same seq and path would close the failure whatever its journal)."""
    records = [
        CommitRecord(seq=s, op="file", path=f"{under}f{s}", committed_at=time.time()) for s in ok
    ]
    records += [
        CommitRecord(seq=s, op="file", path=f"{under}f{s}", ok=False, error="disk full")
        for s in failed
    ]
    return CommitReport(
        mapping_id=mid,
        source_node=SRC,
        target_node=target,
        watermark=watermark,
        records=tuple(records),
        journal_id=journal,
    )


def _journals(store_url: str) -> dict[tuple[str, int], tuple[str, bool]]:
    """(journal id, open) of every exception row, by (target, seq): read from the table."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT target_node, seq, journal_id, resolved_at FROM exceptions")
            )
            return {(t, q): (j, r is None) for t, q, j, r in rows}
    finally:
        engine.dispose()


def _committed(store: Store, mid: int, seq: int, journal: str) -> int:
    [row] = [r for r in store.job_log(mapping_id=mid) if (r.seq, r.journal_id) == (seq, journal)]
    return row.committed_targets


def _state(store: Store, mid: int, seq: int, target: str) -> str:
    _, states = store.routing.change_states(mid, seq)
    return {s.node_id: s.state for s in states}[target]


def test_a_repeat_failure_of_no_journal_named_keeps_the_rows_journal(
    store: Store, store_url: str, mapping_id: int
) -> None:
    """T1 fails OLD's seq 5, then again with no journal named (sent along an older agent):
    the row stays OLD's, so the head switch closes it; in one batch as in two."""
    store.record_source_heads({SRC: [(mapping_id, 10, OLD)]})
    store.record_commit_reports([report(mapping_id, T1, OLD, 4, range(1, 5), (5,))])
    store.record_commit_reports([report(mapping_id, T1, "", 4, range(0), (5,))])
    store.record_commit_reports(
        [
            report(mapping_id, T2, OLD, 4, range(1, 5), (6,)),
            report(mapping_id, T2, "", 4, range(0), (6,)),
        ]
    )
    assert _journals(store_url) == {(T1, 5): (OLD, True), (T2, 6): (OLD, True)}
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})
    assert _journals(store_url) == {(T1, 5): (OLD, False), (T2, 6): (OLD, False)}
    # a failure of no journal named after the replaced journal's row was closed: not OLD's (its
    # reports are dropped now), so no longer that journal's
    store.record_commit_reports([report(mapping_id, T1, "", 0, range(0), (5,))])
    assert _journals(store_url)[(T1, 5)] == ("", True)


def test_a_failure_counts_against_its_own_journals_change_only(
    store: Store, mapping_id: int
) -> None:
    """The head names OLD still. T1 failed OLD's seq 3, then reports NEW (the source was reset)
    with 1..5 committed: NEW's change 3 (another path) is committed on T1. T2 failed NEW's seq
    2 and a late report of OLD puts its watermark back there: OLD's change 2 is committed on T2."""
    store.record_source_heads({SRC: [(mapping_id, 10, OLD)]})
    store.record_commit_reports([report(mapping_id, t, OLD, 2, range(1, 3)) for t in (T1, T2)])
    store.record_commit_reports([report(mapping_id, T1, OLD, 2, range(0), (3,))])
    store.record_commit_reports([report(mapping_id, T1, NEW, 5, range(1, 6), under="new/")])
    assert _committed(store, mapping_id, 3, NEW) == 1
    store.record_commit_reports([report(mapping_id, T2, NEW, 1, range(1, 2), (2,), under="new/")])
    store.record_commit_reports([report(mapping_id, T2, OLD, 2, range(1, 3))])  # resent
    assert _committed(store, mapping_id, 2, OLD) == 1  # T2's (T1's watermark is NEW's)
    assert _state(store, mapping_id, 2, T2) == "committed"  # the head's journal: OLD
    assert _state(store, mapping_id, 3, T1) == "failed"  # OLD's own failure still counts
    # a failure of no journal named counts against either journal's change
    store.record_commit_reports([report(mapping_id, T2, "", 2, range(0), (1,), under="x/")])
    assert _state(store, mapping_id, 1, T2) == "failed"
    assert _committed(store, mapping_id, 1, OLD) == 0


def test_exceptions_show_their_journal(store: Store, mapping_id: int) -> None:
    store.record_commit_reports([report(mapping_id, T1, OLD, 0, range(0), (1,))])
    store.record_commit_reports([report(mapping_id, T2, "", 0, range(0), (1,))])
    assert {(e.target_node, e.journal_id) for e in store.exceptions(mapping_id)} == {
        (T1, OLD),
        (T2, ""),
    }


def _open(store_url: str) -> set[tuple[str, int]]:
    return {key for key, (_, still_open) in _journals(store_url).items() if still_open}


def test_a_commit_resolves_a_failure_of_its_own_journal_only(
    store: Store, store_url: str, mapping_id: int
) -> None:
    """T1 failed OLD's seq 3 (f3); the source was reset and T1 committed NEW's seq 3, which is
    another change of the same path: OLD's failure stays open (before: closed by it) until OLD's
    own seq 3 commits. A commit naming no journal (an older agent) closes either's."""
    store.record_source_heads({SRC: [(mapping_id, 10, OLD)]})
    store.record_commit_reports(
        [report(mapping_id, t, OLD, 2, range(1, 3), (3,)) for t in (T1, T2)]
    )
    assert _open(store_url) == {(T1, 3), (T2, 3)}
    store.record_commit_reports([report(mapping_id, T1, NEW, 3, range(1, 4))])
    assert _open(store_url) == {(T1, 3), (T2, 3)}  # the bug: {(T2, 3)}
    store.record_commit_reports([report(mapping_id, T1, OLD, 3, range(3, 4))])
    store.record_commit_reports([report(mapping_id, T2, "", 3, range(3, 4))])
    assert _open(store_url) == set()


def test_a_watermark_of_another_journal_does_not_commit_the_heads_change(
    store: Store, mapping_id: int
) -> None:
    """The head names OLD; T1 already reports NEW (the source was reset) up to 5: OLD's change
    3 is not committed on T1 (before: 'committed', its NEW watermark 5 >= 3); T2, at OLD's 5,
    has it."""
    store.record_source_heads({SRC: [(mapping_id, 10, OLD)]})
    store.record_commit_reports([report(mapping_id, T1, NEW, 5, range(1, 6))])
    store.record_commit_reports([report(mapping_id, T2, OLD, 5, range(1, 6))])
    assert _state(store, mapping_id, 3, T1) == "pending"  # the bug: "committed"
    assert _state(store, mapping_id, 3, T2) == "committed"
