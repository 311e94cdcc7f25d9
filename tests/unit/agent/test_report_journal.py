"""Commit reports name the source journal their seqs count in, through the agent's report path:
the receiver's callback, the split into runs and the merge of queued reports."""

from __future__ import annotations

from types import SimpleNamespace

import anyio

from relaysync.agent._report_runs import _merge, make_report
from relaysync.agent.report_queue import Queued
from relaysync.agent.service import AgentService
from relaysync.protocol.messages import DECODER, ENCODER, CommitRecord, CommitReport

SOURCE, TARGET = "s" * 64, "t" * 64


def test_the_receivers_report_names_the_sessions_journal() -> None:
    sent: list[CommitReport] = []
    link = SimpleNamespace(report=sent.append)
    service = SimpleNamespace(link=link, node_id=TARGET)
    folder = SimpleNamespace(mapping_id=1, source_node=SOURCE, route=(), durable=False)
    report = AgentService._reporter(service, folder, "journal-2")  # type: ignore[arg-type]

    async def main() -> None:
        await anyio.to_thread.run_sync(report, 1, [CommitRecord(seq=1, op="write", path="f")])

    anyio.run(main)
    assert [r.journal_id for r in sent] == ["journal-2"]


def _report(seq: int, journal_id: str) -> Queued:
    record = CommitRecord(seq=seq, op="write", path=f"f{seq}")
    return Queued(make_report(1, SOURCE, TARGET, seq, (record,), (), journal_id), 1)


def test_reports_of_two_journals_are_not_merged_and_keep_their_journal() -> None:
    merged = _merge([_report(7, "old"), _report(8, "old"), _report(1, "new")])
    assert [(q.report.journal_id, len(q.report.records)) for q in merged] == [
        ("old", 2),
        ("new", 1),
    ]


def test_the_journal_crosses_the_wire_and_a_report_without_one_decodes_as_before() -> None:
    report = _report(1, "journal-2").report
    assert DECODER.decode(ENCODER.encode(report)) == report
    older = _report(1, "").report
    assert b"journal_id" not in ENCODER.encode(older)  # an older master sees what it knew
    assert DECODER.decode(ENCODER.encode(older)).journal_id == ""  # type: ignore[union-attr]
