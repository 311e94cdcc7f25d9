"""The job-log writer over a real store: a batch the store refuses for what it holds (not for
being down) is written in pieces at the first failure, not after flushes of retries."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from relaysync.master.events import EventBus
from relaysync.master.joblog import JobLogWriter
from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport

SRC, T1, T2 = "a" * 64, "b" * 64, "c" * 64


def _mapping(store: Store) -> int:
    for node, name in ((SRC, "src"), (T1, "t1"), (T2, "t2")):
        store.upsert_server(node_id=node, name=name, region="", group="", address=f"{name}:1")
    return store.create_mapping(
        name="m", source="src", source_path="/a", targets=[("t1", "/b"), ("t2", "/c")]
    ).id


def _report(mid: int, target: str, watermark: int, *wire_bytes: int) -> CommitReport:
    records = tuple(
        CommitRecord(seq=watermark - k, op="write", path=f"f{watermark - k}", wire_bytes=b)
        for k, b in enumerate(wire_bytes)
    )
    return CommitReport(
        mapping_id=mid, source_node=SRC, target_node=target, watermark=watermark, records=records
    )


def test_a_batch_refused_for_its_values_is_written_in_pieces_at_the_first_flush(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Two records whose wire bytes sum past the BIGINT column (as the control server no
    longer lets through: master/_report_bounds.py) in a batch with honest reports. The first
    flush writes the honest ones (and the two records, each alone fits), with at most one
    traceback for the one error; it retried the batch for two more flushes
    (JOB_LOG_FLUSH_INTERVAL_S apart) first, holding every agent's reports, with a traceback at
    each."""
    mid = _mapping(store)
    writer = JobLogWriter(store, EventBus())
    taken: list[int] = []
    for report in (
        _report(mid, T1, 1, 10),
        _report(mid, T2, 4, 2**62, 2**62),  # each fits; their sum does not
        _report(mid, T1, 2, 10),
    ):
        writer.add(report, taken=lambda w=report.watermark: taken.append(w))
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    anyio.run(writer.flush)
    assert time.monotonic() - started < 30  # no retry waits inside a flush either
    assert {1, 2} <= {r.seq for r in store.job_log(mapping_id=mid)}
    assert sorted(taken) == [1, 2, 4]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) <= 1, [r.getMessage() for r in tracebacks]
