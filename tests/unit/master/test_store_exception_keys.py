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
