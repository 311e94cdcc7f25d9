"""Journal records to wire ops: every op carries the time its record was journaled."""

from __future__ import annotations

from pathlib import Path

from relaysync.protocol.messages import Delete, FileStart, MakeDir, Rename
from relaysync.transfer.ops import record_messages
from relaysync.watch.changes import JournalRecord
from relaysync.watch.manifest import Entry


def test_ops_carry_the_journal_time(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    at_ns = 1_700_000_000_500_000_000
    records = [
        JournalRecord(seq=1, op="write", path="f", time_ns=at_ns),
        JournalRecord(seq=2, op="mkdir", path="d", entry=Entry(path="d", kind="d", mode=0o755), time_ns=at_ns),
        JournalRecord(seq=3, op="rename", path="f", new_path="g", time_ns=at_ns),
        JournalRecord(seq=4, op="delete", path="g"),  # a journal written before times were kept
    ]
    ops = [m for r in records for m in record_messages(tmp_path, r)]
    starts = [m for m in ops if isinstance(m, FileStart | MakeDir | Rename | Delete)]
    assert [(type(m).__name__, m.changed_at) for m in starts] == [
        ("FileStart", 1_700_000_000.5), ("MakeDir", 1_700_000_000.5), ("Rename", 1_700_000_000.5),
        ("Delete", 0.0)]
