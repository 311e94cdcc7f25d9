"""Commit reports as the job log tests record them: a source and two targets, one report builder."""

from __future__ import annotations

from relaysync.protocol.messages import CommitRecord, CommitReport

SRC, T1, T2 = "a" * 64, "b" * 64, "c" * 64


def report(
    mid: int,
    target: str,
    watermark: int,
    *records: CommitRecord,
    route: tuple[str, ...] = (),
    journal: str = "",
) -> CommitReport:
    """`target`'s report to mapping `mid` of SRC: `records`, up to `watermark`, along `route`,
    of source journal `journal` ("" names none, as an older agent's)."""
    return CommitReport(
        mapping_id=mid,
        source_node=SRC,
        target_node=target,
        watermark=watermark,
        records=records,
        route=route,
        journal_id=journal,
    )
