"""The estimate of what a queued commit report holds in memory (agent/_report_memory.py) is not
below what it holds, measured with tracemalloc as the outbox reads reports back, for the shapes
that make strings dominate: short removed paths, ASCII or not (a non-ASCII str is a wider object:
with 56 B an item, 10,000 removed 2-letter Cyrillic paths held 1.3 times the estimate), and long
ones. The queue's memory bound is only as good as this estimate."""

from __future__ import annotations

import collections
import gc
import tracemalloc

import pytest

from relaysync.agent._outbox_segments import DECODER
from relaysync.agent._report_memory import held_bytes
from relaysync.agent.report_queue import Queued
from relaysync.protocol.messages import ENCODER, CommitRecord, CommitReport

COPIES = 20  # measured over several, so that the allocator's slack averages out


def _report(records: list[CommitRecord], route: tuple[str, ...] = ()) -> CommitReport:
    return CommitReport(
        mapping_id=1,
        source_node="a" * 64,
        target_node="b" * 64,
        watermark=1,
        records=tuple(records),
        route=route,
    )


def _removed(paths: list[str]) -> CommitReport:
    return _report([CommitRecord(seq=1, op="delete", path="d", removed=tuple(paths))])


SHAPES = {
    "1 record, 20-char path": _report([CommitRecord(seq=1, op="write", path="x" * 20)]),
    "1 record, 1,000-char path": _report([CommitRecord(seq=1, op="write", path="x" * 1000)]),
    "2,000 records, 100-char paths": _report(
        [CommitRecord(seq=i, op="write", path=f"{i}/".ljust(100, "x")) for i in range(2000)]
    ),
    "2,000 records, 1-char path, large numbers": _report(
        [
            CommitRecord(
                seq=10**12 + i,
                op="write",
                path="x",
                size=10**12,
                wire_bytes=10**12,
                duration_ms=1.1,
                committed_at=1.7e9,
                changed_at=1.7e9,
            )
            for i in range(2000)
        ]
    ),
    "2,000 records, 10 CJK characters, conflict_with": _report(
        [
            CommitRecord(
                seq=i, op="write", path="写" * 10, conflict="newer", conflict_with="c" * 64
            )
            for i in range(2000)
        ]
    ),
    "10,000 removed 2-char ASCII paths": _removed([f"{i % 100:02d}" for i in range(10_000)]),
    "10,000 removed 4-char ASCII paths": _removed([f"{i:04d}" for i in range(10_000)]),
    "10,000 removed 2-char Cyrillic paths": _removed(
        [chr(0x430 + i % 32) + chr(0x430 + i // 32 % 32) for i in range(10_000)]
    ),
    "10,000 removed 1-emoji paths": _removed([chr(0x1F600 + i % 80) for i in range(10_000)]),
    "10,000 removed CJK paths": _removed([f"d/写真_{i:04d}.jpg" for i in range(10_000)]),
    "10,000 removed accented paths": _removed(
        [f"photos/2024/img_{i:05d}_é.jpg" for i in range(10_000)]
    ),
    "10,000 removed 300-char paths": _removed([f"{i}/".ljust(300, "x") for i in range(10_000)]),
    "64 route nodes of 2 chars": _report(
        [CommitRecord(seq=1, op="write", path="x")],
        route=tuple(chr(97 + i % 26) * 2 for i in range(64)),
    ),
}


def _traced(payload: bytes, estimate: int) -> float:
    """What one report read back from `payload` holds, in a Queued in a deque, as traced."""
    queue: collections.deque[Queued] = collections.deque()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(COPIES):
            queue.append(Queued(DECODER.decode(payload), 1, estimate))
        return (tracemalloc.get_traced_memory()[0] - before) / COPIES
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("report", SHAPES.values(), ids=SHAPES.keys())
def test_the_estimate_is_not_below_what_a_report_holds(report: CommitReport) -> None:
    payload = ENCODER.encode(report)
    estimate = held_bytes(report, len(payload))
    traced = _traced(payload, estimate)
    assert traced <= estimate, f"held {traced:,.0f} B, estimated {estimate:,} B"
    assert traced >= estimate * 0.4, f"held {traced:,.0f} B, estimated {estimate:,} B (far above)"
