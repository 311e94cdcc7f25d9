"""Per-path coalescing of journal records: drop writes that a later write or delete supersedes."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from relaysync.watch.changes import JournalRecord


def _related(a: str, b: str) -> bool:
    """Return True if a is b, or one is an ancestor directory of the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _superseded(records: Sequence[JournalRecord]) -> set[int]:
    """Return indexes of write records superseded by a later write/delete of the same path.

    Scans backwards, remembering for each path whether a write or delete of it follows with no
    rename that touches it (renames of the path, of an ancestor or of a descendant) in between.
    """
    covered: set[str] = set()
    dropped: set[int] = set()
    for i in range(len(records) - 1, -1, -1):
        rec = records[i]
        if rec.op == "rename":
            covered = {
                p for p in covered if not (_related(p, rec.path) or _related(p, rec.new_path))
            }
        elif rec.op == "write":
            if rec.path in covered:
                dropped.add(i)
            covered.add(rec.path)
        elif rec.op == "delete":
            covered.add(rec.path)
    return dropped


def coalesce_records(records: Sequence[JournalRecord]) -> list[JournalRecord]:
    """Drop superseded writes, keeping every other record and the order.

    A kept write inherits the base hash of the earliest write it supersedes (when no delete,
    mkdir or symlink of that path came between), since that base is the version a target that
    skipped the dropped writes still holds.
    """
    dropped = _superseded(records)
    carry: dict[str, bytes] = {}
    out: list[JournalRecord] = []
    for i, rec in enumerate(records):
        if i in dropped:
            carry.setdefault(rec.path, rec.base_hash)
            continue
        if rec.op == "write" and rec.path in carry:
            rec = msgspec.structs.replace(rec, base_hash=carry.pop(rec.path))
        elif rec.op in ("delete", "mkdir", "symlink") and carry:
            for path in [p for p in carry if _related(p, rec.path)]:
                del carry[path]
        out.append(rec)
    return out
