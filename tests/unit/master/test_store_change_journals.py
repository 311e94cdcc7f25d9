"""Store: the change rows of a source journal recreated since (its seqs count from 1 again under
a new journal id) are kept beside the old journal's, and every reader means the right one: the
job log, the paths known under a directory (what a deleted directory's purge names), the
change counts and the rows' committed figures. Before, the rows were keyed (mapping, source,
seq) and inserted with ON CONFLICT DO NOTHING: the new journal's changes at the seqs the old
one used were dropped while the old rows lived on."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from relaysync.master.api.jobs import _cursor
from relaysync.master.store import Store
from relaysync.master.store.types import ChangeLogRow
from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.testing.cluster import wait_until
from tests.unit.master._old_rows import job_log_at
from tests.unit.master._reports import SRC, T1, T2, report
from tests.unit.master.test_store_ids import _migrate_to
from tests.unit.master.test_store_joblog import count, mapping_id

__all__ = ["mapping_id"]  # the fixture, used by name

OLD, NEW = "1" * 32, "2" * 32


def committed(
    mid: int, target: str, journal: str, changes: dict[int, tuple[str, str]], watermark: int
) -> CommitReport:
    """`target` committed `changes` (seq -> (op, path)) of `journal`, up to `watermark`."""
    records = (
        CommitRecord(seq=s, op=op, path=path, size=10, committed_at=time.time())
        for s, (op, path) in sorted(changes.items())
    )
    return report(mid, target, watermark, *records, journal=journal)


OLD_CHANGES = {s: ("file", f"old/f{s}.html") for s in range(1, 11)}
NEW_CHANGES = {
    1: ("mkdir", "docs"),
    2: ("file", "docs/a.html"),
    3: ("mkdir", "docs/sub"),
    4: ("file", "docs/sub/b.html"),
}


def _reset(store: Store, mid: int) -> None:
    """The old journal's 10 changes on both targets; the source's state is lost and its new
    journal's 4 changes (seqs 1-4 again) reach T1 only."""
    store.record_commit_reports([committed(mid, t, OLD, OLD_CHANGES, 10) for t in (T1, T2)])
    store.record_source_heads({SRC: [(mid, 10, OLD)]})
    store.record_source_heads({SRC: [(mid, 4, NEW)]})
    store.record_commit_reports([committed(mid, T1, NEW, NEW_CHANGES, 4)])


def _low_rows(store: Store, mid: int) -> set[tuple[int, str, str, int, bool]]:
    """(seq, op, path, committed targets, replaced) of the log's rows at seqs 1-4."""
    return {
        (r.seq, r.op, r.path, r.committed_targets, r.replaced)
        for r in store.job_log(mapping_id=mid)
        if r.seq <= 4
    }


def test_the_log_shows_both_journals_changes_at_a_reused_seq(
    store: Store, store_url: str, mapping_id: int
) -> None:
    """Before, seqs 1-4 showed the old journal's files (old/f1.html ...) for the new journal's
    changes, counted committed on both targets by the new journal's watermarks (T1 at 4)."""
    _reset(store, mapping_id)
    assert count(store_url, "changes") == 14
    new = {(s, op, path, 1, False) for s, (op, path) in NEW_CHANGES.items()}
    old = {(s, "file", f"old/f{s}.html", 0, True) for s in range(1, 5)}  # history: no target
    assert _low_rows(store, mapping_id) == new | old
    store.record_commit_reports([committed(mapping_id, T2, NEW, NEW_CHANGES, 4)])
    assert {(s, c) for s, _, _, c, r in _low_rows(store, mapping_id) if not r} == {
        (s, 2) for s in range(1, 5)
    }


def test_a_directory_deleted_in_the_new_journal_names_its_new_files(
    store: Store, mapping_id: int
) -> None:
    """The purge of a deleted directory on caches without bans (nginx, Squid) names every path
    the job log knows under it. Before, the files and directories the new journal made at seqs
    the old journal used were unknown: their cached pages outlived the directory."""
    _reset(store, mapping_id)
    assert store.changed_paths_under(mapping_id, "docs") == [
        "docs/a.html",
        "docs/sub",
        "docs/sub/b.html",
    ]
    assert store.made_dirs_under(mapping_id, "docs") == ["docs/sub"]
    assert "docs" in store.made_dirs_under(mapping_id, "")


def test_the_change_counts_count_both_journals(store: Store, mapping_id: int) -> None:
    """Before, the statistics counted 10 changes (the new journal's 4 dropped)."""
    _reset(store, mapping_id)
    [row] = store.stats.stats(by="mapping")
    assert (row.changes, row.change_bytes) == (14, 140)


def test_older_and_newer_targets_report_one_row_per_change(
    store: Store, store_url: str, mapping_id: int
) -> None:
    """A rolling upgrade: T2's older agent names no journal, T1's names it. A row of none named
    reported in the head's journal is that journal's change, whichever reports first; one from
    before the head's journal (the old journal's, an upgrade's rows) is not. (A row of none
    named keeps "": it matches any journal; see the next tests for when it is a replaced one's.)"""
    store.record_source_heads({SRC: [(mapping_id, 10, OLD)]})
    store.record_commit_reports([committed(mapping_id, T2, "", OLD_CHANGES, 10)])
    store.record_commit_reports([committed(mapping_id, T1, OLD, OLD_CHANGES, 10)])
    assert count(store_url, "changes") == 10
    store.record_source_heads({SRC: [(mapping_id, 4, NEW)]})
    store.record_commit_reports(
        [
            committed(mapping_id, T2, "", NEW_CHANGES, 4),  # in one batch with T1's: one row
            committed(mapping_id, T1, NEW, NEW_CHANGES, 4),
        ]
    )
    assert count(store_url, "changes") == 14
    more = {5: ("file", "docs/c.html")}
    store.record_commit_reports([committed(mapping_id, T2, "", more, 5)])
    store.record_commit_reports([committed(mapping_id, T1, NEW, more, 5)])
    assert count(store_url, "changes") == 15
    rows = {(r.seq, r.journal_id, r.path) for r in store.job_log(mapping_id=mapping_id)}
    assert rows == {(s, NEW, p) for s, (_, p) in {**NEW_CHANGES, **more}.items()} | {
        (s, "", f"old/f{s}.html")
        for s in range(1, 11)  # none named: the old journal's
    }


def test_an_older_target_reporting_the_new_journal_before_its_head_makes_no_second_row(
    store: Store, store_url: str, mapping_id: int
) -> None:
    """The head still names the old journal when T2 (older agent, none named) reports the new
    journal's changes 1-12, then T1 names them: before, its changes 11 and 12 got two rows each,
    one per kind of target (24 rows, and the statistics counted 24 changes). The row moves to
    the new journal: reported before the head named it, it would look like the old one's."""
    store.record_source_heads({SRC: [(mapping_id, 10, OLD)]})
    store.record_commit_reports([committed(mapping_id, T2, "", OLD_CHANGES, 10)])
    store.record_commit_reports([committed(mapping_id, T1, OLD, OLD_CHANGES, 10)])
    new = {**NEW_CHANGES, **{s: ("file", f"docs/n{s}.html") for s in range(5, 13)}}
    store.record_commit_reports([committed(mapping_id, T2, "", new, 12)])
    store.record_commit_reports([committed(mapping_id, T1, NEW, new, 12)])
    store.record_source_heads({SRC: [(mapping_id, 12, NEW)]})
    assert count(store_url, "changes") == 22
    high = sorted(
        (r.seq, r.journal_id, r.path, r.committed_targets, r.replaced)
        for r in store.job_log(mapping_id=mapping_id)
        if r.seq > 10
    )
    # T2's watermark of none named was voided at the switch: T1's counts
    assert high == [(11, NEW, "docs/n11.html", 1, False), (12, NEW, "docs/n12.html", 1, False)]
    [row] = store.stats.stats(by="mapping")
    assert row.changes == 22


def test_the_old_journals_rows_of_no_journal_named_show_as_replaced(
    store: Store, mapping_id: int
) -> None:
    """Rows of none named (older targets, or an upgrade from 0025) reported before the head's
    new journal was first heard are the replaced journal's: before, they matched the new
    journal's watermarks, changes 1-4 showed as committed on both targets and 5-10 as pending
    for good; rows of none named reported since are the new journal's."""
    store.record_source_heads({SRC: [(mapping_id, 10, OLD)]})
    store.record_commit_reports([committed(mapping_id, t, "", OLD_CHANGES, 10) for t in (T1, T2)])
    old_at = time.time()  # the new journal is first heard later than the old rows
    wait_until(lambda: time.time() > old_at, timeout_s=5, interval_s=0.001, what="clock")
    store.record_source_heads({SRC: [(mapping_id, 4, NEW)]})
    store.record_commit_reports([committed(mapping_id, t, NEW, NEW_CHANGES, 4) for t in (T1, T2)])
    more = {11: ("file", "docs/c.html")}
    store.record_commit_reports([committed(mapping_id, T2, "", more, 11)])  # older agent, new
    rows = {
        (r.seq, r.path): (r.committed_targets, r.replaced)
        for r in store.job_log(mapping_id=mapping_id)
    }
    assert {k: v for k, v in rows.items() if k[1].startswith("old/")} == {
        (s, f"old/f{s}.html"): (0, True) for s in range(1, 11)
    }
    assert rows[(11, "docs/c.html")] == (1, False)


def test_a_new_journal_adopted_from_a_target_keeps_its_first_changes(
    store: Store, store_url: str, mapping_id: int
) -> None:
    """The source agent names no journal (older than the ids): T1's first report of a new
    journal switches the head (`adopt_journals`). Before, that report's changes were taken for
    the old journal's rows of none named at their seqs (11 rows, not 15), and a deleted
    directory's purge named none of the new files under it."""
    store.record_source_heads({SRC: [(mapping_id, 10)]})
    store.record_commit_reports([committed(mapping_id, T1, "", OLD_CHANGES, 10)])
    store.record_commit_reports([committed(mapping_id, T1, OLD, {11: ("file", "old/f11")}, 11)])
    store.record_commit_reports([committed(mapping_id, T1, NEW, NEW_CHANGES, 4)])
    assert count(store_url, "changes") == 15
    assert store.changed_paths_under(mapping_id, "docs") == [
        "docs/a.html",
        "docs/sub",
        "docs/sub/b.html",
    ]


def test_a_prune_deletes_the_old_journals_rows_and_keeps_the_new(
    store: Store, mapping_id: int
) -> None:
    """Retention deletes each row by its own age: the old journal's rows at seqs 1-4 go, the
    new journal's at the same seqs, reported since, stay."""
    store.record_commit_reports([committed(mapping_id, T1, OLD, OLD_CHANGES, 10)])
    store.record_source_heads({SRC: [(mapping_id, 10, OLD)]})
    old_at = max(r.reported_at for r in store.job_log(mapping_id=mapping_id))
    while time.time() <= old_at:  # the new rows are reported after the cutoff, however coarse
        pass
    cutoff = time.time()
    store.record_source_heads({SRC: [(mapping_id, 4, NEW)]})
    store.record_commit_reports([committed(mapping_id, T1, NEW, NEW_CHANGES, 4)])
    store.retention.set({"changes": 1})
    deleted = store.retention.prune(cutoff + 86_400)
    assert deleted["changes"] == 9  # the old journal's 1-9; its 10 is the newest seq: kept
    rows = store.job_log(mapping_id=mapping_id)
    assert {(r.seq, r.path) for r in rows if not r.replaced} == {
        (s, p) for s, (_, p) in NEW_CHANGES.items()
    }


def _page(rows: list[ChangeLogRow]) -> list[tuple[int, str]]:
    return [(r.seq, r.journal_id) for r in rows]


def test_the_log_pages_through_rows_of_two_journals_at_one_seq(
    store: Store, mapping_id: int
) -> None:
    """A page that ends between the two journals' rows at one seq goes on with the other."""
    _reset(store, mapping_id)
    rows = store.job_log(mapping_id=mapping_id, limit=100)
    pages, before, tie = [], None, None
    while True:
        page = store.job_log(mapping_id=mapping_id, limit=3, before_seq=before, after_tie=tie)
        if not page:
            break
        pages.extend(page)
        last = page[-1]
        before, tie = last.seq, (last.mapping_id, last.source_node, last.journal_id)
    assert _page(pages) == _page(rows)
    assert len(rows) == 14


@pytest.mark.parametrize(
    ("journal", "rest"), [("", [(4, OLD), (4, NEW)]), (OLD, [(4, NEW)]), (None, [])]
)
def test_the_api_cursor_names_the_journal(
    store: Store, mapping_id: int, journal: str | None, rest: list[tuple[int, str]]
) -> None:
    """GET /api/jobs?before=SEQ:MAPPING_ID:SOURCE_NODE:JOURNAL_ID goes on past that row only
    (journal ids sort "" < OLD < NEW); without the journal id, past that source's rows at SEQ."""
    _reset(store, mapping_id)
    cursor = f"4:{mapping_id}:{SRC}" + ("" if journal is None else f":{journal}")
    seq, tie = _cursor(cursor)
    rows = store.job_log(mapping_id=mapping_id, limit=100, before_seq=seq, after_tie=tie)
    assert _page(rows)[: len(rest) + 1] == [*rest, (3, OLD)]


def test_the_upgrade_keeps_the_rows_as_of_no_journal_named(empty_store_url: str) -> None:
    """0026 on a job log of 0025: its rows get journal "" (matches any); a new journal's row at
    one of their seqs is then a row of its own. The downgrade keeps one row per seq, the one
    reported last."""
    with job_log_at(empty_store_url, "0025_alert_retention", SRC) as engine:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO changes (mapping_id, source_node, seq, op, path, size,"
                    " reported_at, changed_at) VALUES (1, :n, :q, 'file', :p, 10, 1, 0)"
                ),
                [{"n": SRC, "q": q, "p": f"old/f{q}.html"} for q in (1, 2)],
            )
        _migrate_to(empty_store_url, "0026_change_journals")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO changes (mapping_id, source_node, seq, journal_id, op, path,"
                    " size, reported_at, changed_at) VALUES (1, :n, 1, :j, 'file', 'new', 10, 2, 0)"
                ),
                {"n": SRC, "j": NEW},
            )
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT seq, journal_id, path FROM changes ORDER BY 1, 2"))
            assert rows.all() == [(1, "", "old/f1.html"), (1, NEW, "new"), (2, "", "old/f2.html")]
        _migrate_to(empty_store_url, "0025_alert_retention", down=True)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT seq, path FROM changes ORDER BY 1"))
            assert rows.all() == [(1, "new"), (2, "old/f2.html")]
