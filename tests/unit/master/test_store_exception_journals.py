"""Store: a failure notes the source journal its seq counts in, and when a new journal replaces
that one its open failures are closed (kept as history); the new journal's own, reported by a
target before the source's head names the new journal, stay open, and so do those of no journal
named (older agents). Before, a replaced journal's open failure of seq q stayed open for good
and the new journal's change q counted as failed on its target; closing every open failure at
the switch (reverted) closed the new journal's own too."""

from __future__ import annotations

import time

import sqlalchemy as sa

from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport
from tests.unit.master import _reports
from tests.unit.master._old_rows import job_log_at
from tests.unit.master._reports import SRC, T1, T2
from tests.unit.master.test_store_ids import _migrate_to
from tests.unit.master.test_store_joblog import mapping_id

__all__ = ["mapping_id"]  # the fixture, used by name

OLD, NEW = "1" * 32, "2" * 32


def report(
    mid: int, target: str, journal: str, watermark: int, ok: range, failed: tuple[int, ...] = ()
) -> CommitReport:
    """`target` committed the seqs `ok` of `journal` and failed `failed` (path "<journal>/f<seq>")."""
    records = [
        CommitRecord(seq=s, op="file", path=f"{journal}/f{s}", committed_at=time.time()) for s in ok
    ]
    records += [
        CommitRecord(seq=s, op="file", path=f"{journal}/f{s}", ok=False, error="disk full")
        for s in failed
    ]
    return _reports.report(mid, target, watermark, *records, journal=journal)


def _open(store: Store, mid: int) -> set[tuple[str, int, str]]:
    return {(e.target_node, e.seq, e.path) for e in store.exceptions(mid, open_only=True)}


def _old_journal_with_failures(store: Store, mid: int, head_journal: str) -> None:
    """Both targets at 90 of the old journal; T2 failed its seq 95 and T1 (an older agent, no
    journal named) its seq 97; T1 then reports the new journal, failing its seq 3."""
    store.record_source_heads({SRC: [(mid, 100, head_journal)]})
    store.record_commit_reports([report(mid, t, OLD, 90, range(1, 91)) for t in (T1, T2)])
    store.record_commit_reports([report(mid, T2, OLD, 90, range(0), (95,))])
    store.record_commit_reports([report(mid, T1, "", 90, range(0), (97,))])
    store.record_commit_reports([report(mid, T1, NEW, 2, range(1, 3), (3,))])


def test_the_head_switch_closes_the_old_journals_failures_only(
    store: Store, mapping_id: int
) -> None:
    _old_journal_with_failures(store, mapping_id, OLD)
    assert (T2, 95, f"{OLD}/f95") in _open(store, mapping_id)  # the head names OLD still
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})
    assert _open(store, mapping_id) == {(T1, 3, f"{NEW}/f3"), (T1, 97, "/f97")}
    closed = [e for e in store.exceptions(mapping_id) if e.seq == 95]
    assert [e.resolved_at is not None for e in closed] == [True]  # kept, as history
    new_row = [r for r in store.job_log(mapping_id=mapping_id) if (r.seq, r.journal_id) == (3, NEW)]
    assert [r.committed_targets for r in new_row] == [0]
    store.record_source_heads({SRC: [(mapping_id, 8, NEW)]})  # the same journal: nothing closed
    assert _open(store, mapping_id) == {(T1, 3, f"{NEW}/f3"), (T1, 97, "/f97")}


def test_a_new_journal_adopted_from_a_target_closes_the_old_ones_failures(
    store: Store, mapping_id: int
) -> None:
    """The source agent names no journal (older than the ids): T1's report of the new journal
    switches the head (`adopt_journals`), and retires the old journal as a head would."""
    _old_journal_with_failures(store, mapping_id, "")
    assert _open(store, mapping_id) == {(T1, 3, f"{NEW}/f3"), (T1, 97, "/f97")}


def test_the_migration_adds_and_drops_the_exceptions_journal(empty_store_url: str) -> None:
    """0027 on a job log of 0026: its failures get journal "" (not known: never closed by a
    retire); the downgrade drops the column and the changes index."""
    with job_log_at(empty_store_url, "0026_change_journals", SRC) as engine:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO exceptions (mapping_id, source_node, target_node, seq, path,"
                    " path_key, error, at, attempts) VALUES (1, :n, :t, 5, 'f5', 'k', 'x', 1, 1)"
                ),
                {"n": SRC, "t": T1},
            )
        _migrate_to(empty_store_url, "0027_seq_index_exc_journals")
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT seq, journal_id, resolved_at FROM exceptions"))
            assert rows.all() == [(5, "", None)]
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("changes")}
            assert "ix_changes_mapping_seq" in indexes
        _migrate_to(empty_store_url, "0026_change_journals", down=True)
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert "journal_id" not in {c["name"] for c in inspector.get_columns("exceptions")}
            assert "ix_changes_mapping_seq" not in {
                i["name"] for i in inspector.get_indexes("changes")
            }
            assert conn.execute(sa.text("SELECT seq FROM exceptions")).all() == [(5,)]
