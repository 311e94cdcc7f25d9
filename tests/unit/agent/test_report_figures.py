"""An agent's figures say how many commit reports wait for the master and how many the queue's
bound dropped: the drops (records missing from the job log and the purges) were only in the
agent's own log."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from relaysync.agent import report_queue
from relaysync.agent._report_runs import _merge
from relaysync.agent.outbox import ReportOutbox
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


def own_figures(queue: ReportQueue) -> dict[str, float]:
    """The figures an agent whose master link holds `queue` (and nothing else) reports."""
    service = SimpleNamespace(
        sources={},
        relays={},
        refused_sources={},
        _cert_pem=b"",
        link=SimpleNamespace(connected=False, reports=queue),
    )
    return {s.name: s.value for s in AgentService._own_figures(service)}  # type: ignore[arg-type]


def test_the_figures_count_reports_waiting_and_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 3)
    queue = ReportQueue()  # the master is down: nothing is taken
    for seq in range(1, 6):
        queue.add(_report(seq))
    figures = own_figures(queue)
    assert figures["commit_reports_pending"] == 3
    assert figures["commit_reports_dropped"] == 2


def _sent(queue: ReportQueue) -> None:
    """What the link does: the next 64 reports, merged into fewer messages, sent."""
    queue.unacked.extend(_merge(queue.take_batch(64)))


def test_a_merged_message_counts_as_the_reports_it_stands_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 one-record reports of one mapping go as one message: sent and not taken, they are
    still 64 pending (were: 1), and a drop past the bound takes the first of them alone
    (tests/unit/agent/test_report_drops.py), counted as 1."""
    box = ReportOutbox(tmp_path / "outbox", "t" * 64)
    box.open()
    queue = ReportQueue(box)
    for seq in range(64):
        queue.add(_report(seq))
    _sent(queue)
    assert len(queue.unacked) == 1 and queue.pending == 64 == box.pending
    queue.session_over()
    assert queue.pending == 64
    _sent(queue)
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 64)
    queue.add(_report(64))  # past the bound: the oldest report goes, out of the message
    assert queue.dropped == 1 and queue.pending == 64 == box.pending
    queue.taken(1)  # the master took the message: the rest of it is taken
    # and the one dropped out of it with it: it was sent in that message, so no marker
    assert queue.pending == 1 == box.pending
    assert [item.report.watermark for item in queue.unsent] == [64]
