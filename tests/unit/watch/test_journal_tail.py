"""Tests for the journal's in-memory tail: reads at the head are what the segments hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaysync.errors import JournalGap
from relaysync.watch import journal as journal_mod
from relaysync.watch.changes import PendingChange
from relaysync.watch.journal import Journal
from relaysync.watch.manifest import Entry


def w(path: str) -> PendingChange:
    return PendingChange(
        op="write", path=path, entry=Entry(path=path, kind="f", size=1, hash=b"h" * 16)
    )


def appended(j: Journal, batches: int, per_batch: int) -> None:
    for b in range(batches):
        j.append([w(f"d{b}/f{i}") for i in range(per_batch)])


def test_reads_at_the_head_are_the_records_the_segments_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every (after, limit) read of a journal whose tail holds only the last records equals the
    same read of the journal reopened (which reads its segments), across the tail's start."""
    monkeypatch.setattr(journal_mod, "TAIL_BYTES", 4096)  # a tail of the last ~40 records
    live = Journal(tmp_path / "j", fsync=False, segment_bytes=3000)  # several segments too
    appended(live, 20, 7)
    assert 0 < len(live._tail) < 140 and live._tail[-1].seq == live.last_seq == 140
    assert live._tail_bytes <= 4096
    reopened = Journal(tmp_path / "j", fsync=False, segment_bytes=3000)
    assert not reopened._tail
    for after in range(0, 142):
        for limit in (1, 5, 1000):
            assert live.read(after, limit) == reopened.read(after, limit), (after, limit)
    reopened.close()
    live.close()


def test_the_tail_is_kept_as_written_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read at the head returns the very records `append` returned (not decoded again), and
    the tail never holds more than TAIL_BYTES of frames."""
    monkeypatch.setattr(journal_mod, "TAIL_BYTES", 2048)
    j = Journal(tmp_path / "j", fsync=False)
    for b in range(30):
        records = j.append([w(f"x{b}"), w(f"y{b}")])
        assert all(got is rec for got, rec in zip(j.read(records[0].seq - 1), records, strict=True))
        assert j._tail_bytes == sum(j._tail_sizes) <= 2048
        assert [r.seq for r in j._tail] == list(range(j._tail[0].seq, j.last_seq + 1))
    j.close()


def test_released_records_leave_the_tail_and_a_gap_is_still_told(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", fsync=False)
    appended(j, 3, 10)
    j.release(12)
    assert j._tail[0].seq == 13 and j._tail_bytes == sum(j._tail_sizes)
    with pytest.raises(JournalGap):
        j.read(5)
    assert [r.seq for r in j.read(5, skip_released=True)] == list(range(13, 31))
    j.release(30)
    assert not j._tail and j._tail_bytes == 0
    assert j.read(30) == []
    j.append([w("after")])
    assert [r.path for r in j.read(30)] == ["after"]
    j.close()
