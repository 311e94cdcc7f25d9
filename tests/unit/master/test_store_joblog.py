"""Store: commit reports fold into one change row per change, watermarks, advances and exceptions."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport
from tests.unit.master._reports import SRC, T1, T2, report


@pytest.fixture
def mapping_id(store: Store) -> int:
    for node, name in ((SRC, "src"), (T1, "t1"), (T2, "t2")):
        store.upsert_server(node_id=node, name=name, region="", group="", address=f"{name}:1")
    return store.create_mapping(
        name="m", source="src", source_path="/a", targets=[("t1", "/b"), ("t2", "/c")]
    ).id


def rec(
    seq: int, *, ok: bool = True, path: str | None = None, wire_bytes: int = 10
) -> CommitRecord:
    return CommitRecord(
        seq=seq,
        op="file",
        path=path or f"f{seq}",
        size=100,
        wire_bytes=wire_bytes,
        ok=ok,
        error="" if ok else "disk full",
        duration_ms=1.5,
        committed_at=time.time(),
    )


def count(store_url: str, table: str) -> int:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"select count(*) from {table}")).scalar_one())
    finally:
        engine.dispose()


def test_one_change_row_per_change_however_reported(
    store: Store, store_url: str, mapping_id: int
) -> None:
    r1 = report(mapping_id, T1, 3, rec(1), rec(2), rec(3))
    store.record_commit_reports([r1])
    store.record_commit_reports([r1])  # the same report again, e.g. after a restart
    store.record_commit_reports(
        [report(mapping_id, T2, 3, rec(1), rec(2), rec(3))]
    )  # another target
    assert count(store_url, "changes") == 3
    rows = store.job_log(mapping_id=mapping_id)
    assert [r.seq for r in rows] == [3, 2, 1]
    assert {(r.committed_targets, r.total_targets) for r in rows} == {(2, 2)}
    assert rows[0].path == "f3" and rows[0].op == "file" and rows[0].size == 100


def test_watermark_never_decreases(store: Store, store_url: str, mapping_id: int) -> None:
    store.record_commit_reports([report(mapping_id, T1, 5, *(rec(s) for s in range(1, 6)))])
    store.record_commit_reports([report(mapping_id, T1, 2, rec(2))])
    marks = store.watermarks(mapping_id)
    assert [(w.source, w.target, w.seq) for w in marks] == [(SRC, T1, 5)]
    assert count(store_url, "watermark_advances") == 1
    store.record_commit_reports([report(mapping_id, T1, 7, rec(6), rec(7))])
    assert store.watermarks(mapping_id)[0].seq == 7
    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        advances = conn.execute(
            sa.text(
                "select from_seq, to_seq, files, wire_bytes, duration_ms from watermark_advances order by id"
            )
        ).all()
    engine.dispose()
    assert [tuple(a) for a in advances] == [(0, 5, 5, 50, 7.5), (5, 7, 2, 20, 3.0)]


def test_batch_with_repeats_and_reordering(store: Store, mapping_id: int) -> None:
    store.record_commit_reports(
        [
            report(mapping_id, T1, 4, rec(3), rec(4)),
            report(mapping_id, T1, 2, rec(1), rec(2)),  # late, lower watermark in the same batch
            report(mapping_id, T2, 4, rec(1), rec(2), rec(3), rec(4)),
        ]
    )
    assert {w.target: w.seq for w in store.watermarks(mapping_id)} == {T1: 4, T2: 4}
    assert len(store.job_log(mapping_id=mapping_id)) == 4


def test_failure_is_an_exception_until_it_commits(store: Store, mapping_id: int) -> None:
    store.record_commit_reports(
        [
            report(mapping_id, T1, 3, rec(1), rec(2, ok=False), rec(3)),
            report(mapping_id, T2, 3, rec(1), rec(2), rec(3)),
        ]
    )
    [exc] = store.exceptions(mapping_id)
    assert (exc.seq, exc.target_node, exc.path, exc.error, exc.attempts, exc.resolved_at) == (
        2,
        T1,
        "f2",
        "disk full",
        1,
        None,
    )
    log = {r.seq: r.committed_targets for r in store.job_log(mapping_id=mapping_id)}
    assert log == {1: 2, 2: 1, 3: 2}
    store.record_commit_reports([report(mapping_id, T1, 3, rec(2, ok=False))])
    [exc] = store.exceptions(mapping_id)
    assert exc.attempts == 2
    store.record_commit_reports([report(mapping_id, T1, 3, rec(2))])
    [exc] = store.exceptions(mapping_id)
    assert exc.resolved_at is not None
    assert store.exceptions(mapping_id, open_only=True) == []
    assert {r.committed_targets for r in store.job_log(mapping_id=mapping_id)} == {2}


def test_catchup_work_is_counted_not_logged(store: Store, store_url: str, mapping_id: int) -> None:
    store.record_commit_reports([report(mapping_id, T1, 0, rec(0, path="x"), rec(0, path="y"))])
    store.record_commit_reports([report(mapping_id, T1, 0, rec(0, path="z", wire_bytes=5))])
    assert count(store_url, "changes") == 0
    [c] = store.catchup(mapping_id)
    assert (c.target_node, c.files, c.bytes) == (T1, 3, 25)
    store.record_commit_reports([report(mapping_id, T1, 0, rec(0, path="w", ok=False))])
    assert [(e.seq, e.path) for e in store.exceptions(mapping_id)] == [(0, "w")]


def test_reports_of_deleted_mappings_are_dropped(store: Store, mapping_id: int) -> None:
    store.record_commit_reports([report(mapping_id + 100, T1, 3, rec(1))])
    store.record_commit_reports([])
    assert store.job_log() == []


def test_job_log_paging_and_status(store: Store, mapping_id: int) -> None:
    store.record_commit_reports(
        [
            report(mapping_id, T1, 10, *(rec(s) for s in range(1, 11))),
            report(mapping_id, T2, 4, *(rec(s) for s in range(1, 5))),
        ]
    )
    page = store.job_log(mapping_id="m", limit=3)
    assert [r.seq for r in page] == [10, 9, 8]
    assert [r.seq for r in store.job_log(limit=3, before_seq=8)] == [7, 6, 5]
    assert [r.committed_targets for r in store.job_log(limit=10)][-5:] == [1, 2, 2, 2, 2]
    status = {s.target: s for s in store.mapping_status(mapping_id)}
    assert (status[T1].watermark, status[T1].highest_seq, status[T1].lag) == (10, 10, 0)
    assert (status[T2].watermark, status[T2].lag) == (4, 6)


def test_job_log_pages_across_mappings_without_skipping_a_seq_shared(
    store: Store, mapping_id: int
) -> None:
    """Every mapping journals from seq 1: the rows of one seq in several mappings sit side by
    side. Before the fix a page ending inside such a group, paged on with its bare seq
    (seq < before), skipped the group's other rows: paged 3 at a time, 3 of 12 never showed."""
    other = store.create_mapping(
        name="m2", source="src", source_path="/x", targets=[("t1", "/y")]
    ).id
    store.record_commit_reports(
        [
            report(mapping_id, T1, 6, *(rec(s) for s in range(1, 7))),
            report(other, T1, 6, *(rec(s) for s in range(1, 7))),
        ]
    )
    everything = [(r.seq, r.mapping_id) for r in store.job_log(limit=100)]
    assert len(everything) == 12
    paged: list[tuple[int, int]] = []
    before: tuple[int, tuple[int, str]] | None = None
    for _ in range(10):  # 4 pages of 3, then an empty one
        page = store.job_log(
            limit=3,
            before_seq=before[0] if before else None,
            after_tie=before[1] if before else None,
        )
        if not page:
            break
        paged += [(r.seq, r.mapping_id) for r in page]
        before = (page[-1].seq, (page[-1].mapping_id, page[-1].source_node))
    assert paged == everything
    # a bare seq still means "below it" (what older clients send)
    assert {r.seq for r in store.job_log(limit=100, before_seq=3)} == {1, 2}


def test_removed_target_no_longer_counts(store: Store, mapping_id: int) -> None:
    store.record_commit_reports(
        [report(mapping_id, T1, 1, rec(1)), report(mapping_id, T2, 1, rec(1))]
    )
    store.update_mapping(mapping_id, targets=[("t1", "/b")])
    [row] = store.job_log()
    assert (row.committed_targets, row.total_targets) == (1, 1)


def test_ten_thousand_records_in_one_call(store: Store, store_url: str, mapping_id: int) -> None:
    """Taken whole, and taken once when repeated. How fast: bench/joblog.py (timed assertions
    belong to the benchmarks, not to a suite sharing its cores)."""
    records = tuple(rec(s) for s in range(1, 10_001))
    store.record_commit_reports([report(mapping_id, T1, 10_000, *records)])
    store.record_commit_reports([report(mapping_id, T1, 10_000, *records)])
    assert count(store_url, "changes") == 10_000
    assert store.watermarks(mapping_id)[0].seq == 10_000


def test_deleting_a_mapping_drops_its_job_log(
    store: Store, store_url: str, mapping_id: int
) -> None:
    store.record_commit_reports([report(mapping_id, T1, 2, rec(1), rec(2, ok=False))])
    store.delete_mapping(mapping_id)
    for table in ("changes", "watermarks", "watermark_advances", "exceptions"):
        assert count(store_url, table) == 0, table


def test_concurrent_batches_from_threads(store: Store, store_url: str, mapping_id: int) -> None:
    import threading

    errors: list[BaseException] = []

    def send(target: str, offset: int) -> None:
        try:
            for start in range(1, 401, 50):
                records = tuple(rec(s) for s in range(start, start + 50))
                store.record_commit_reports(
                    [report(mapping_id, target, start + 49 + offset, *records)]
                )
        except BaseException as exc:  # collected and re-raised by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(t, o)) for t in (T1, T2) for o in (0, -10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(store_url, "changes") == 400
    assert {w.target: w.seq for w in store.watermarks(mapping_id)} == {T1: 400, T2: 400}


def test_the_last_outcome_of_a_change_in_a_batch_is_the_one_kept(
    store: Store, mapping_id: int
) -> None:
    """Within one batch a change may fail and then commit, or the reverse; successes are noted
    only where they can resolve something (an exception open before the batch, or one failed
    earlier in it), so each case is checked here."""
    store.record_commit_reports([report(mapping_id, T1, 0, rec(5, ok=False))])  # open before
    store.record_commit_reports(
        [
            report(mapping_id, T1, 1, rec(1, ok=False), rec(1)),  # failed, then committed
            report(mapping_id, T1, 2, rec(2), rec(2, ok=False)),  # committed, then failed
            report(mapping_id, T2, 3, rec(3, ok=False)),  # another target
            report(mapping_id, T2, 3, rec(3), rec(4)),  # ... committed in a later report
            report(mapping_id, T1, 5, rec(5)),  # resolves the one open before
        ]
    )
    rows = {(e.target_node, e.seq): e for e in store.exceptions(mapping_id)}
    assert set(rows) == {(T1, 2), (T1, 5)}
    assert rows[(T1, 2)].resolved_at is None and rows[(T1, 2)].attempts == 1
    assert rows[(T1, 5)].resolved_at is not None
    store.record_commit_reports([report(mapping_id, T1, 5, rec(2))])
    assert store.exceptions(mapping_id, open_only=True) == []


def test_change_rows_skip_sqlalchemys_work_per_row_on_sqlite(
    store: Store, store_url: str, mapping_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy building the parameters of each change row cost about as much as SQLite's
    inserts (10,000 rows: 40 of 85 ms): on SQLite the rows go to the driver as tuples."""
    if not store_url.startswith("sqlite"):
        pytest.skip("PostgreSQL takes the rows through SQLAlchemy")
    from sqlalchemy.sql.compiler import SQLCompiler

    built = 0
    construct = SQLCompiler.construct_params

    def counted(self: SQLCompiler, *args: Any, **kwargs: Any) -> Any:
        nonlocal built
        built += 1
        return construct(self, *args, **kwargs)

    monkeypatch.setattr(SQLCompiler, "construct_params", counted)
    store.record_commit_reports([report(mapping_id, T1, 1000, *(rec(s) for s in range(1, 1001)))])
    assert count(store_url, "changes") == 1000
    assert built < 50  # per statement, not per row
    [row] = store.job_log(mapping_id=mapping_id, limit=1)
    assert (row.seq, row.op, row.path, row.size) == (1000, "file", "f1000", 100)


def _lags(store: Store, mapping_id: int) -> dict[str, tuple[int, int, int]]:
    return {s.target: (s.watermark, s.highest_seq, s.lag) for s in store.mapping_status(mapping_id)}


def test_lag_counts_from_the_source_head_when_no_target_reports(
    store: Store, mapping_id: int
) -> None:
    """Every target down: nothing reports, yet the source says it journaled 50 changes."""
    assert _lags(store, mapping_id) == {T1: (0, 0, 0), T2: (0, 0, 0)}
    assert store.record_source_heads({SRC: [(mapping_id, 50)]}) == {SRC: [mapping_id]}
    assert _lags(store, mapping_id) == {T1: (0, 50, 50), T2: (0, 50, 50)}


def test_head_is_the_higher_of_the_source_and_the_targets_reports(
    store: Store, mapping_id: int
) -> None:
    store.record_commit_reports(
        [
            report(mapping_id, T1, 10, *(rec(s) for s in range(1, 11))),
            report(mapping_id, T2, 4, *(rec(s) for s in range(1, 5))),
        ]
    )
    store.record_source_heads({SRC: [(mapping_id, 25)]})  # 15 more journaled, T1 and T2 down
    assert _lags(store, mapping_id) == {T1: (10, 25, 15), T2: (4, 25, 21)}
    # a source head behind the targets' reports (an older figures report) lowers nothing
    store.record_source_heads({SRC: [(mapping_id, 8)]})
    assert _lags(store, mapping_id) == {T1: (10, 10, 0), T2: (4, 10, 6)}
    # a watermark past the head (the head not yet sent again) is a lag of 0, never negative
    store.record_commit_reports([report(mapping_id, T2, 12, *(rec(s) for s in range(5, 13)))])
    assert _lags(store, mapping_id)[T2] == (12, 12, 0)
    assert _lags(store, mapping_id)[T1] == (10, 12, 2)


def test_only_the_mappings_source_sets_its_head(
    store: Store, store_url: str, mapping_id: int
) -> None:
    """A target, or a mapping gone, sets no head: a head is the source's word only. The store
    says which it wrote (the control server remembers only those), in one call for every
    source."""
    written = store.record_source_heads(
        {T1: [(mapping_id, 99)], SRC: [(mapping_id + 100, 99), (mapping_id, 7)]}
    )
    assert written == {T1: [], SRC: [mapping_id]}
    assert {s.highest_seq for s in store.mapping_status(mapping_id)} == {7}
    store.update_mapping(mapping_id, name="renamed")  # the same source keeps its head
    assert count(store_url, "source_heads") == 1
    store.update_mapping(mapping_id, source="t2", targets=[("t1", "/b")])
    # the old source's head is not the new source's
    assert {s.highest_seq for s in store.mapping_status(mapping_id)} == {0}
    assert count(store_url, "source_heads") == 0  # deleted with the move, not left behind
    assert store.record_source_heads({T2: [(mapping_id, 3)]}) == {T2: [mapping_id]}
    store.delete_mapping(mapping_id)  # its heads go with it
    assert count(store_url, "source_heads") == 0


def test_a_source_back_after_a_move_shows_its_next_head_not_its_old_one(
    store: Store, store_url: str, mapping_id: int
) -> None:
    """Source A -> B -> A: A's head from before the move is gone; its next report sets it."""
    store.record_source_heads({SRC: [(mapping_id, 40)]})
    store.update_mapping(mapping_id, source="t2", targets=[("t1", "/b")])
    store.update_mapping(mapping_id, source="src", targets=[("t1", "/b"), ("t2", "/c")])
    assert {s.highest_seq for s in store.mapping_status(mapping_id)} == {0}
    store.record_source_heads({SRC: [(mapping_id, 41)]})
    assert {s.highest_seq for s in store.mapping_status(mapping_id)} == {41}


def _split(store: Store, mapping_id: int) -> dict[str, tuple[int, int, int, int]]:
    return {
        s.target: (s.watermark, s.highest_seq, s.lag, s.pending)
        for s in store.mapping_status(mapping_id)
    }


def test_a_manual_mappings_held_changes_are_pending_not_lag(store: Store, mapping_id: int) -> None:
    """A manual (or reserved) mapping holds its changes until a release: those are `pending`,
    by choice; only what a release covers and a target has not committed is lag."""
    store.record_commit_reports(
        [
            report(mapping_id, T1, 10, *(rec(s) for s in range(1, 11))),
            report(mapping_id, T2, 4, *(rec(s) for s in range(1, 5))),
        ]
    )
    store.record_source_heads({SRC: [(mapping_id, 30)]})
    assert _split(store, mapping_id) == {T1: (10, 30, 20, 0), T2: (4, 30, 26, 0)}  # real-time
    store.modes.set_mode(mapping_id, "manual")
    # no release yet: everything past each target's watermark is held back, none of it lag
    assert _split(store, mapping_id) == {T1: (10, 30, 0, 20), T2: (4, 30, 0, 26)}
    release = store.modes.release(mapping_id).release
    store.modes.record_release(mapping_id, release, 20)  # the release covers seq 1..20
    assert _split(store, mapping_id) == {T1: (10, 30, 10, 10), T2: (4, 30, 16, 10)}
    store.record_commit_reports([report(mapping_id, T1, 20, *(rec(s) for s in range(11, 21)))])
    assert _split(store, mapping_id)[T1] == (20, 30, 0, 10)
    store.modes.set_mode(mapping_id, "reserved", "every:3600")
    assert _split(store, mapping_id)[T1] == (20, 30, 0, 10)
    store.modes.set_mode(mapping_id, "realtime")  # nothing held back: all of it is lag again
    assert _split(store, mapping_id) == {T1: (20, 30, 10, 0), T2: (4, 30, 26, 0)}


def test_a_source_move_starts_the_new_source_with_nothing_released(
    store: Store, mapping_id: int
) -> None:
    """`released_upto` is a seq of the source's journal: after a move it said nothing of the
    new source's, yet it was kept (it only goes up), so the new source's held-back changes
    showed as lag (source A released to 5000, B journals 200: lag 200 until B passed 5000).
    The move resets it, and the new source's report of what the current release covers (any
    seq above 0) is taken."""
    store.modes.set_mode(mapping_id, "manual")
    release = store.modes.release(mapping_id).release
    store.record_source_heads({SRC: [(mapping_id, 5000)]})
    store.modes.record_release(mapping_id, release, 5000)
    store.update_mapping(mapping_id, targets=[("t1", "/b")])  # not a move: kept
    assert store.modes.get(mapping_id).released_upto == 5000
    store.update_mapping(mapping_id, source="t2", targets=[("t1", "/b")])
    assert store.modes.get(mapping_id).released_upto == 0
    store.record_source_heads({T2: [(mapping_id, 200)]})
    assert _split(store, mapping_id) == {T1: (0, 200, 0, 200)}  # held back, not lag
    store.modes.record_release(mapping_id, release, 5001, SRC)  # the former source, late
    assert store.modes.get(mapping_id).released_upto == 0  # cannot set it back (review)
    store.modes.record_release(mapping_id, release, 3, T2)  # the new source's first report
    assert store.modes.get(mapping_id).released_upto == 3
    assert _split(store, mapping_id) == {T1: (0, 200, 3, 197)}


def test_heads_all_refused_are_checked_without_a_write_transaction(
    store: Store, mapping_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report whose heads are all refused (a former source's, or made-up ids) costs a read
    transaction only; one with a head to take, one write transaction."""
    writes: list[str] = []
    write = store._write

    def spied(operation: str) -> Any:
        writes.append(operation)
        return write(operation)

    monkeypatch.setattr(store, "_write", spied)
    refused = {T1: [(mapping_id, 9), (mapping_id + 1, 9)], T2: []}
    assert store.record_source_heads(refused) == {T1: [], T2: []}
    assert writes == []
    assert store.record_source_heads({**refused, SRC: [(mapping_id, 7)]}) == {
        T1: [],
        T2: [],
        SRC: [mapping_id],
    }
    assert writes == ["record source heads"]
    assert {s.highest_seq for s in store.mapping_status(mapping_id)} == {7}


def sent(mid: int, target: str, watermark: int, *records: CommitRecord) -> CommitReport:
    """A report of commits sent by the source itself (route: the source alone)."""
    return report(mid, target, watermark, *records, route=("src",))


def op_rec(seq: int, op: str, path: str = "p", *, ok: bool = True) -> CommitRecord:
    return CommitRecord(seq=seq, op=op, path=path, ok=ok, error="" if ok else "EIO")


def open_failures(store: Store, mapping_id: int) -> list[tuple[int, str, str]]:
    return sorted(
        (e.seq, e.path, e.target_node) for e in store.exceptions(mapping_id, open_only=True)
    )


def test_a_later_commit_of_the_path_makes_its_failure_moot(store: Store, mapping_id: int) -> None:
    """A file whose write failed, written again later under another seq (or by a comparison,
    seq 0), is right on the target: its failure stayed open for good."""
    store.record_commit_reports([sent(mapping_id, T1, 3, op_rec(3, "write"))])
    store.record_commit_reports([sent(mapping_id, T1, 4, op_rec(4, "write", ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 4, op_rec(4, "write", "other"))])
    assert open_failures(store, mapping_id) == [(4, "p", T1)]  # another path
    store.record_commit_reports([sent(mapping_id, T2, 7, op_rec(7, "write"))])
    assert open_failures(store, mapping_id) == [(4, "p", T1)]  # another target
    store.record_commit_reports([sent(mapping_id, T1, 7, op_rec(7, "write"))])
    assert open_failures(store, mapping_id) == []
    store.record_commit_reports([sent(mapping_id, T1, 8, op_rec(8, "delete", ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 8, op_rec(0, "write"))])  # comparison
    assert open_failures(store, mapping_id) == []


@pytest.mark.parametrize(
    ("failed", "later", "moot"),
    [
        ("write", "attr", False),  # the content is still not the source's
        ("write", "rename", False),  # it moved what the path held
        ("write", "erase", False),  # an erase removes what is below the path, not the path
        ("rename", "write", False),  # what its new path holds is another matter
        ("delete", "mkdir", False),  # a mkdir keeps what an existing directory holds
        ("attr", "mkdir", False),  # it sets no mtime
        ("attr", "attr", True),
        ("attr", "write", True),
        ("mkdir", "write", True),
        ("symlink", "delete", True),
        ("write", "delete", True),
        ("erase", "erase", True),
        ("smallfile", "write", True),  # a refused message, under its message's name
    ],
)
def test_which_commits_make_which_failures_moot(
    store: Store, mapping_id: int, failed: str, later: str, moot: bool
) -> None:
    store.record_commit_reports([sent(mapping_id, T1, 2, op_rec(2, failed, ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(5, later))])
    assert open_failures(store, mapping_id) == ([] if moot else [(2, "p", T1)])


def test_a_comparisons_delete_does_not_make_a_failure_moot(store: Store, mapping_id: int) -> None:
    """A comparison deletes a path of the wrong kind before it writes the source's: the delete
    is half of a replace whose write may still fail (a file the source cannot read)."""
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(5, "write", ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(0, "delete"))])
    assert open_failures(store, mapping_id) == [(5, "p", T1)]


def test_an_older_commit_reported_later_leaves_the_failure_open(
    store: Store, mapping_id: int
) -> None:
    store.record_commit_reports([sent(mapping_id, T1, 6, op_rec(6, "write", ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 6, op_rec(5, "write"))])  # a replay
    assert open_failures(store, mapping_id) == [(6, "p", T1)]


def test_in_one_batch_only_a_commit_after_the_failure_makes_it_moot(
    store: Store, mapping_id: int
) -> None:
    store.record_commit_reports([sent(mapping_id, T1, 1, op_rec(1, "write", "q", ok=False))])
    store.record_commit_reports(  # T1 has a failure open: its commits are noted
        [
            sent(mapping_id, T1, 2, op_rec(0, "write")),  # a comparison's, before the failure
            sent(mapping_id, T1, 3, op_rec(3, "write", ok=False)),
        ]
    )
    assert open_failures(store, mapping_id) == [(1, "q", T1), (3, "p", T1)]
    store.record_commit_reports(  # T2 has none open: a failure, then its commit, in one batch
        [
            sent(mapping_id, T2, 3, op_rec(3, "write", "r", ok=False)),
            sent(mapping_id, T2, 4, op_rec(4, "write", "r")),
        ]
    )
    assert open_failures(store, mapping_id) == [(1, "q", T1), (3, "p", T1)]


def test_another_source_or_a_conflict_kept_version_makes_nothing_moot(
    store: Store, mapping_id: int
) -> None:
    store.record_commit_reports([sent(mapping_id, T1, 2, op_rec(2, "write", ok=False))])
    moved = CommitReport(
        mapping_id=mapping_id,
        source_node="d" * 64,  # the mapping's source moved: another journal
        target_node=T1,
        watermark=9,
        records=(op_rec(9, "write"),),
    )
    store.record_commit_reports([moved])
    kept = CommitRecord(seq=9, op="write", path="p", conflict="older")  # N:M: not applied
    store.record_commit_reports([sent(mapping_id, T1, 9, kept)])
    assert open_failures(store, mapping_id) == [(2, "p", T1)]


def test_failures_written_before_their_op_was_kept_stay_for_their_own_commit(
    store: Store, store_url: str, mapping_id: int
) -> None:
    store.record_commit_reports([sent(mapping_id, T1, 2, op_rec(2, "write", ok=False))])
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("update exceptions set op = null"))
    finally:
        engine.dispose()
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(5, "write"))])
    assert open_failures(store, mapping_id) == [(2, "p", T1)]
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(2, "write"))])
    assert open_failures(store, mapping_id) == []


def test_commits_through_a_relay_or_of_an_unknown_route_make_nothing_moot(
    store: Store, mapping_id: int
) -> None:
    """A relay's comparison sends its own copy of a path, which may be a version it kept
    because it could not apply the source's."""
    store.record_commit_reports([sent(mapping_id, T1, 2, op_rec(2, "write", ok=False))])
    relayed = report(mapping_id, T1, 9, op_rec(0, "write"), route=("src", "relay1"))
    store.record_commit_reports([relayed, report(mapping_id, T1, 9, op_rec(9, "write"))])
    assert open_failures(store, mapping_id) == [(2, "p", T1)]


def test_more_pairs_of_failure_and_commit(store: Store, mapping_id: int) -> None:
    store.record_commit_reports([sent(mapping_id, T1, 0, op_rec(0, "write", "a", ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 4, op_rec(4, "delete", "a"))])  # journal
    store.record_commit_reports([sent(mapping_id, T1, 4, op_rec(3, "erase", "b", ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(5, "mkdir", "b"))])
    newer = CommitRecord(seq=6, op="write", path="c", conflict="newer")  # N:M: applied
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(5, "write", "c", ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 6, newer)])
    store.record_commit_reports(  # failed, committed, failed again: open
        [
            sent(mapping_id, T1, 7, op_rec(7, "write", "d", ok=False)),
            sent(mapping_id, T1, 8, op_rec(8, "write", "d")),
            sent(mapping_id, T1, 9, op_rec(9, "write", "d", ok=False)),
        ]
    )
    assert open_failures(store, mapping_id) == [(3, "b", T1), (9, "d", T1)]


def test_a_journal_delete_of_a_directory_makes_the_failures_below_it_moot(
    store: Store, mapping_id: int
) -> None:
    """docs/a.html failed (disk full), then the source deleted docs/: the target holds what the
    source has below docs/, nothing."""
    failures = [
        op_rec(2, "write", "docs/a.html", ok=False),
        op_rec(3, "mkdir", "docs/sub", ok=False),
        op_rec(3, "write", "docs/sub/deep/b.html", ok=False),
        op_rec(0, "attr", "docs/c", ok=False),  # a comparison's
        op_rec(4, "rename", "docs/r", ok=False),  # what its new path holds is another matter
    ]
    store.record_commit_reports([sent(mapping_id, T1, 4, *failures)])
    store.record_commit_reports([sent(mapping_id, T2, 2, failures[0])])
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(5, "delete", "docs"))])
    assert open_failures(store, mapping_id) == [(2, "docs/a.html", T2), (4, "docs/r", T1)]


def test_a_path_that_only_starts_like_the_deleted_directory_is_not_below_it(
    store: Store, mapping_id: int
) -> None:
    others = [op_rec(3, "write", p, ok=False) for p in ("docs2/x", "docs.old/x", "doc", "docsx")]
    store.record_commit_reports(
        [sent(mapping_id, T1, 3, op_rec(2, "write", "docs/x", ok=False), *others)]
    )
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(5, "delete", "docs"))])
    assert open_failures(store, mapping_id) == [
        (3, "doc", T1),
        (3, "docs.old/x", T1),
        (3, "docs2/x", T1),
        (3, "docsx", T1),
    ]


def test_a_failure_below_of_a_later_seq_than_the_delete_stays_open(
    store: Store, mapping_id: int
) -> None:
    """docs/ deleted at seq 5, then created again: the failure of seq 8 is of the new tree."""
    store.record_commit_reports(
        [
            sent(mapping_id, T1, 3, op_rec(3, "write", "docs/a", ok=False)),
            sent(mapping_id, T1, 8, op_rec(8, "write", "docs/b", ok=False)),
        ]
    )
    store.record_commit_reports([sent(mapping_id, T1, 8, op_rec(5, "delete", "docs"))])
    assert open_failures(store, mapping_id) == [(8, "docs/b", T1)]


def test_a_comparisons_delete_of_a_directory_leaves_the_failures_below_it_open(
    store: Store, mapping_id: int
) -> None:
    """A comparison's delete may be the first half of replacing docs/ by a file."""
    store.record_commit_reports([sent(mapping_id, T1, 3, op_rec(3, "write", "docs/a", ok=False))])
    store.record_commit_reports([sent(mapping_id, T1, 3, op_rec(0, "delete", "docs"))])
    assert open_failures(store, mapping_id) == [(3, "docs/a", T1)]
    store.record_commit_reports([sent(mapping_id, T1, 5, op_rec(5, "delete", "docs"))])
    assert open_failures(store, mapping_id) == []


def test_in_one_batch_a_delete_moots_only_the_failures_below_reported_before_it(
    store: Store, mapping_id: int
) -> None:
    store.record_commit_reports([sent(mapping_id, T1, 2, op_rec(2, "write", "docs/a", ok=False))])
    store.record_commit_reports(
        [
            sent(mapping_id, T1, 5, op_rec(5, "delete", "docs")),
            sent(mapping_id, T1, 5, op_rec(4, "write", "docs/b", ok=False)),  # a late report
            sent(mapping_id, T1, 5, op_rec(0, "write", "docs/c", ok=False)),  # a comparison's
        ]
    )
    assert open_failures(store, mapping_id) == [(0, "docs/c", T1), (4, "docs/b", T1)]
    store.record_commit_reports(  # T2 has none open: a failure, then the delete, in one batch
        [
            sent(mapping_id, T2, 3, op_rec(3, "write", "docs/x", ok=False)),
            sent(mapping_id, T2, 5, op_rec(5, "delete", "docs")),
        ]
    )
    assert open_failures(store, mapping_id) == [(0, "docs/c", T1), (4, "docs/b", T1)]


def test_a_delete_by_another_source_or_through_a_relay_leaves_the_failures_below_it_open(
    store: Store, mapping_id: int
) -> None:
    store.record_commit_reports([sent(mapping_id, T1, 2, op_rec(2, "write", "docs/a", ok=False))])
    moved = CommitReport(
        mapping_id=mapping_id,
        source_node="d" * 64,  # the mapping's source moved: another journal
        target_node=T1,
        watermark=9,
        records=(op_rec(9, "delete", "docs"),),
        route=("src",),
    )
    relayed = report(mapping_id, T1, 9, op_rec(9, "delete", "docs"), route=("src", "relay1"))
    unknown = report(mapping_id, T1, 9, op_rec(9, "delete", "docs"))  # no route said
    kept = CommitRecord(seq=9, op="delete", path="docs", conflict="older")  # N:M: not applied
    store.record_commit_reports([moved, relayed, unknown, sent(mapping_id, T1, 9, kept)])
    assert open_failures(store, mapping_id) == [(2, "docs/a", T1)]
    store.record_commit_reports([sent(mapping_id, T1, 9, op_rec(9, "delete", "docs"))])
    assert open_failures(store, mapping_id) == []


def test_many_deleted_directories_in_one_batch(store: Store, mapping_id: int) -> None:
    """More deleted directories than a lookup reads ranges of paths: paths between them in
    order, but not below one, stay open."""
    below = ["x03/f", "x11/sub/f", "x19/f"]
    beside = ["x05a/f", "x1/f", "x110/f", "x19-old/f"]
    failures = [op_rec(2, "write", p, ok=False) for p in below + beside]
    store.record_commit_reports([sent(mapping_id, T1, 2, *failures)])
    deletes = [op_rec(10 + n, "delete", f"x{n:02}") for n in range(20)]
    store.record_commit_reports([sent(mapping_id, T1, 29, *deletes)])
    assert open_failures(store, mapping_id) == sorted((2, p, T1) for p in beside)


def test_a_directory_deleted_inside_a_directory_deleted_earlier(
    store: Store, mapping_id: int
) -> None:
    """a/ deleted at seq 5, made again, a/b/ deleted at seq 10: a failure of seq 7 below a/b/
    is moot, one below a/ but not a/b/ is of the new a/."""
    failures = [op_rec(7, "write", "a/b/x", ok=False), op_rec(7, "write", "a/c", ok=False)]
    store.record_commit_reports([sent(mapping_id, T1, 7, *failures)])
    deletes = [op_rec(5, "delete", "a"), op_rec(10, "delete", "a/b")]
    store.record_commit_reports([sent(mapping_id, T1, 10, *deletes)])
    assert open_failures(store, mapping_id) == [(7, "a/c", T1)]
