"""Commit reports cut and merged to the size of a frame: runs of records, merged batches.

A report is split into runs of at most MAX_REPORT_RECORDS records, MAX_REMOVED_BYTES of removed
paths and MAX_REPORT_BYTES encoded (`_runs`), and consecutive reports of one (mapping, source,
target, route) are merged within the same bounds before they go (`_merge`). Moved out of
agent/master_link.py, whose `MasterLink` queues and sends them.
"""

from __future__ import annotations

from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.protocol.messages import (
    ENCODER,
    MAX_REMOVED_BYTES,
    MAX_REPORT_RECORDS,
    CommitRecord,
    CommitReport,
)
from relaysync.transfer.removal import removed_bytes

from .report_queue import Queued

# A report's encoded size stays within half a frame: a report over MAX_MESSAGE_BYTES ends the
# control session at the master, and with acknowledgements it would be sent again at every
# session (2,000 renames of 1 KB paths encode to 4.4 MB). The records are measured by encoding
# them (about 1 us each; an estimate from their strings fell short by 24-100 bytes a record).
MAX_REPORT_BYTES = MAX_MESSAGE_BYTES // 2


def _record_bytes(record: CommitRecord) -> int:
    """What a record encodes to, in bytes."""
    return len(ENCODER.encode(record))


def _merge(items: list[Queued]) -> list[Queued]:
    """Merge consecutive reports of the same (mapping, source, target, route, journal) into fewer messages
    (each standing for the outbox frames and the reports of those it merged, kept as its parts)."""
    merged: list[Queued] = []
    weight = (0, 0)  # the last merged report's removed and encoded bytes, kept as it grows
    for item in items:
        r = item.report
        last = merged[-1].report if merged else None
        added = (_removed(r), _bytes(r.records))
        if (
            last is not None
            and (last.mapping_id, last.source_node, last.target_node, last.route, last.journal_id)
            == (r.mapping_id, r.source_node, r.target_node, r.route, r.journal_id)
            and len(last.records) + len(r.records) <= MAX_REPORT_RECORDS
            and weight[0] + added[0] <= MAX_REMOVED_BYTES
            and weight[1] + added[1] <= MAX_REPORT_BYTES
        ):
            report = CommitReport(
                mapping_id=r.mapping_id,
                source_node=r.source_node,
                target_node=r.target_node,
                watermark=max(last.watermark, r.watermark),
                records=last.records + r.records,
                route=r.route,
                journal_id=r.journal_id,
            )
            last_item = merged[-1]
            merged[-1] = Queued(
                report,
                last_item.frames + item.frames,
                last_item.held_bytes + item.held_bytes,
                last_item.reports + item.reports,
                (last_item.parts or (last_item,)) + (item.parts or (item,)),
            )
            weight = (weight[0] + added[0], weight[1] + added[1])
        else:
            merged.append(item)
            weight = added
    return merged


def _runs(records: tuple[CommitRecord, ...]) -> list[tuple[CommitRecord, ...]]:
    """The records in runs of one report each: at most MAX_REPORT_RECORDS records,
    MAX_REMOVED_BYTES of removed paths and MAX_REPORT_BYTES encoded (a record over either goes
    alone); one run if none."""
    if (  # the usual report (file writes): one run, measured in one encoding, not one a record
        len(records) <= MAX_REPORT_RECORDS
        and not any(r.removed for r in records)
        and _bytes(records) <= MAX_REPORT_BYTES
    ):
        return [records]
    runs: list[tuple[CommitRecord, ...]] = []
    start = removed = encoded = 0
    for i, record in enumerate(records):
        size, weight = removed_bytes(record), _record_bytes(record)
        if i > start and (
            i - start >= MAX_REPORT_RECORDS
            or removed + size > MAX_REMOVED_BYTES
            or encoded + weight > MAX_REPORT_BYTES
        ):
            runs.append(records[start:i])
            start, removed, encoded = i, 0, 0
        removed += size
        encoded += weight
    runs.append(records[start:])
    return runs


def _removed(report: CommitReport) -> int:
    return sum(removed_bytes(r) for r in report.records if r.removed)


def _bytes(records: tuple[CommitRecord, ...]) -> int:
    """What `records` encode to together: their own bytes and at most 5 of the array's header
    (one encoding for all of them: a sixth of the reporting time was one a record)."""
    return len(ENCODER.encode(records))


def make_report(
    mapping_id: int,
    source: str,
    target: str,
    watermark: int,
    records: tuple[CommitRecord, ...],
    route: tuple[str, ...] = (),
    journal_id: str = "",
) -> CommitReport:
    return CommitReport(
        mapping_id=mapping_id,
        source_node=source,
        target_node=target,
        watermark=watermark,
        records=records,
        route=route,
        journal_id=journal_id,
    )
