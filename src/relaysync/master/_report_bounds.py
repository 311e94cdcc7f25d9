"""Report bounds: the byte figures of a commit report that the job log's columns can hold.

The wire takes any UInt63 for a record's `size` and `wire_bytes`; the job log stores each size
and each report's summed wire bytes in BIGINT columns (SQLite INTEGER, PostgreSQL bigint). A
report over them failed every job-log write it was in (OverflowError from the driver), holding
up every agent's reports for the batch retries, so the control server refuses it
(`ControlTrust._believed`) before the job log sees it.
"""

from __future__ import annotations

from relaysync.protocol.messages import CommitReport

INT64_MAX = 2**63 - 1  # SQLite INTEGER and PostgreSQL bigint
# Bytes of one file (its size, or what its transfer took): 8 PiB, far past any real file, and
# exact both as a float and as a number in the console's JavaScript, which reads these figures.
MAX_FILE_BYTES = 2**53


def out_of_bounds(report: CommitReport) -> str | None:
    """Why the job log cannot hold `report`'s byte figures (a record's size or wire bytes over
    MAX_FILE_BYTES, or its records' wire bytes summed over INT64_MAX), or None if it can."""
    total = 0
    for rec in report.records:
        largest = max(rec.size, rec.wire_bytes)
        if largest > MAX_FILE_BYTES:
            return f"a record of {largest} bytes (at most {MAX_FILE_BYTES})"
        total += rec.wire_bytes
    if total > INT64_MAX:
        return f"records of {total} wire bytes in all (at most {INT64_MAX})"
    return None
