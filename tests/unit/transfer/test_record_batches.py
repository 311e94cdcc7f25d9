"""A full batch of journal records ends before the last directory it makes, so that directory
goes whole in the next batch with its files (the target writes them in it at their own names)."""

from __future__ import annotations

from relaysync.transfer._record_stream import BATCH_RECORDS, whole_dirs
from relaysync.watch.changes import JournalRecord


def _folders(sizes: list[int]) -> list[JournalRecord]:
    """A first scan's records: each folder's mkdir, then its files."""
    out: list[JournalRecord] = []
    for d, n in enumerate(sizes):
        out.append(JournalRecord(seq=len(out) + 1, op="mkdir", path=f"d{d}"))
        out.extend(
            JournalRecord(seq=len(out) + 1 + i, op="write", path=f"d{d}/f{i}") for i in range(n)
        )
    return out


def test_a_full_batch_ends_before_the_last_folder_it_begins() -> None:
    records = _folders([100] * 3)[:BATCH_RECORDS]  # 2 whole folders, the third's 54 first
    kept = whole_dirs(records)
    assert len(kept) == 202 and kept[-1].path == "d1/f99"
    assert records[len(kept)].op == "mkdir"


def test_at_least_half_a_batch_goes() -> None:
    """A folder that began in the first half is cut, as files of a large folder would be
    anyway: the batch goes whole rather than small."""
    records = _folders([100, 300])[:BATCH_RECORDS]  # d1's mkdir at index 101 < 128
    assert whole_dirs(records) == records
    records = _folders([BATCH_RECORDS + 10])[:BATCH_RECORDS]  # one folder, larger than a batch
    assert whole_dirs(records) == records


def test_a_batch_without_a_new_folder_goes_whole() -> None:
    records = [JournalRecord(seq=i + 1, op="write", path=f"f{i}") for i in range(BATCH_RECORDS)]
    assert whole_dirs(records) == records
