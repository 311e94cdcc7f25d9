"""Report paths: a commit report's records kept only with paths a target could have applied.

A target applies a change only at a path `check_relpath` takes (transfer/paths.py: relative, no
empty, "." or ".." component, no NUL, at most MAX_PATH_BYTES), and lists what a delete removed
from its own disk (names of a directory: no NUL, no "/" inside one). The master plans purges from
these paths (purge/urls.py): believed as sent, a hostile target with one valid certificate made
every cache of a site purge a URL outside it (`root/../other/page.html`) and, on Varnish, ban a
whole host (`root/..`), and put NUL into the job log. So a record whose path or new path has
another shape is dropped (the report's watermark still counts: the target's commits are its own),
and so is a removed path of another shape; `ControlTrust._paths_believed` counts and logs them,
with an alarm. A refused record of the target's own (`ok` false: a hostile peer's path it would
not apply) goes too: the target logged it.
"""

from __future__ import annotations

import msgspec

from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.protocol.path_shape import path_fault


def _record_fault(record: CommitRecord) -> str | None:
    return path_fault(record.path, allow_root=True) or (
        path_fault(record.new_path) if record.new_path else None
    )


def with_safe_paths(report: CommitReport) -> tuple[CommitReport, str | None]:
    """`report` without the records and removed paths of another shape (see the module doc),
    and why the first was dropped (None: nothing was, and `report` comes back as it is)."""
    first: str | None = None
    kept: list[CommitRecord] = []
    for record in report.records:
        why = _record_fault(record)
        if why is not None:
            first = first or f"a record of seq {record.seq} with {why}"
            continue
        if any(path_fault(p) is not None for p in record.removed):
            removed = tuple(p for p in record.removed if path_fault(p) is None)
            bad = next(p for p in record.removed if path_fault(p) is not None)
            first = first or f"a removed path of seq {record.seq}: {path_fault(bad)}"
            record = msgspec.structs.replace(record, removed=removed, removed_truncated=True)
        kept.append(record)
    if first is None:
        return report, None
    return msgspec.structs.replace(report, records=tuple(kept)), first
