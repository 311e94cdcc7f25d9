"""A drop past the queue's bound takes the oldest report alone, even out of a message the link
merged from several: it took the whole message (up to 64 reports for one over the bound), and
the reports it stood for, on disk too, were lost though the bound needed one gone.

Checked on real outbox files, through sessions (sent, taken in part, sent again) and restarts:
what the master takes comes in order, none twice, and nothing is missing but what the bound had
to drop: one report for each report added at the bound."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from relaysync.agent import report_queue
from relaysync.agent._report_runs import _merge
from relaysync.agent.outbox import ReportOutbox
from relaysync.agent.report_queue import ReportQueue
from relaysync.protocol.messages import CommitRecord, CommitReport

SRC, TGT = "a" * 64, "b" * 64


def _report(n: int, mapping_id: int = 1) -> CommitReport:
    record = CommitRecord(seq=n, op="write", path=f"dir/file-{n}.html", size=n)
    return CommitReport(
        mapping_id=mapping_id, source_node=SRC, target_node=TGT, watermark=n, records=(record,)
    )


def _outbox(base: Path) -> ReportOutbox:
    return ReportOutbox(base / "outbox", TGT, segment_bytes=2048)


class Master:
    """A master's side of the sessions: the messages of the current one, and every report
    taken, in the order taken."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []  # this session's messages: the seqs of their records
        self.acked = 0
        self.taken: list[int] = []

    def session(self) -> None:
        self.sent, self.acked = [], 0

    def send(self, queue: ReportQueue, limit: int) -> None:
        """What the link does (master_link._send_reports): merged, kept until taken, sent."""
        merged = _merge(queue.take_batch(limit))
        queue.unacked.extend(merged)
        self.sent += [[r.seq for r in item.report.records] for item in merged]

    def take(self, queue: ReportQueue, upto: int) -> None:
        for message in self.sent[self.acked : upto]:
            self.taken += message
        self.acked = upto
        queue.taken(upto)


def test_a_drop_takes_one_report_out_of_a_merged_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box)
    master = Master()
    for n in range(10):
        queue.add(_report(n))
    master.send(queue, 64)  # one message of 10 reports
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 10)
    queue.add(_report(10))
    assert queue.dropped == 1  # was 10: the whole message
    assert queue.pending == 10 == box.pending
    queue.session_over()  # not taken: the message goes again, without its first report
    master.session()
    master.send(queue, 64)
    assert master.sent == [list(range(1, 11))]
    master.take(queue, 1)
    assert queue.pending == 0 == box.pending
    again = _outbox(tmp_path)
    assert again.open() == []


@pytest.mark.parametrize("seed", range(40))
def test_sessions_and_restarts_deliver_in_order_and_drop_only_what_the_bound_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    bound = rng.randint(3, 40)
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", bound)
    max_bytes = rng.choice([None, 4096, 20_000])  # spilled to disk, read back, or all held
    box = _outbox(tmp_path)
    queue = ReportQueue(box, box.open(), max_bytes=max_bytes)
    master = Master()
    added: list[int] = []
    must_drop = 0
    for _ in range(400):
        step = rng.random()
        if step < 0.55:
            n = len(added)
            must_drop += queue.pending >= bound
            queue.add(_report(n, mapping_id=1 if rng.random() < 0.8 else 2))
            added.append(n)
        elif step < 0.75:
            master.send(queue, rng.randint(1, 64))
        elif step < 0.88:
            if master.acked < len(master.sent):
                master.take(queue, rng.randint(master.acked + 1, len(master.sent)))
        elif step < 0.96:
            queue.session_over()
            master.session()
        else:  # a kill of the agent: the next run reads the outbox back
            box = _outbox(tmp_path)
            dropped = queue.dropped
            queue = ReportQueue(box, box.open(), max_bytes=max_bytes)
            queue.dropped = dropped
            master.session()
        assert queue.pending == box.pending
    queue.session_over()
    master.session()
    while queue.unsent or queue.read_back():
        master.send(queue, 64)
        master.take(queue, len(master.sent))
    taken = master.taken
    assert taken == sorted(set(taken)), "out of order or repeated"
    assert queue.dropped == must_drop
    assert len(set(added) - set(taken)) <= must_drop
    assert queue.pending == 0 == box.pending
