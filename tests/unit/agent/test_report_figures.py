"""An agent's figures say how many commit reports wait for the master and how many the queue's
bound dropped: the drops (records missing from the job log and the purges) were only in the
agent's own log."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from relaysync.agent import report_queue
from relaysync.agent.report_queue import ReportQueue
from relaysync.agent.service import AgentService
from relaysync.protocol.messages import CommitRecord, CommitReport


def _report(seq: int) -> CommitReport:
    return CommitReport(
        mapping_id=1,
        source_node="s" * 64,
        target_node="t" * 64,
        watermark=seq,
        records=(CommitRecord(seq=seq, op="write", path=f"f{seq}"),),
    )


def test_the_figures_count_reports_waiting_and_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 3)
    queue = ReportQueue()  # the master is down: nothing is taken
    for seq in range(1, 6):
        queue.add(_report(seq))
    service = SimpleNamespace(
        sources={},
        relays={},
        refused_sources={},
        _cert_pem=b"",
        link=SimpleNamespace(connected=False, reports=queue),
    )
    figures = {s.name: s.value for s in AgentService._own_figures(service)}  # type: ignore[arg-type]
    assert figures["commit_reports_pending"] == 3
    assert figures["commit_reports_dropped"] == 2
