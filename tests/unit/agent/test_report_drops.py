"""A drop past the queue's bound takes the oldest report alone, even out of a message the link
merged from several: it took the whole message (up to 64 reports for one over the bound), and
the reports it stood for, on disk too, were lost though the bound needed one gone.

Checked on real outbox files, through sessions (sent, taken in part, sent again) and restarts:
what the master takes comes in order, none twice, and nothing is missing but what the bound had
to drop: one report for each report added at the bound; and the master is told of each mapping
whose reports it missed (agent/_lost_reports.py), even across restarts."""

from __future__ import annotations

import json
import random
import shutil
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
        self.markers: list[list[int]] = []  # this session's: the mappings lost reports are of
        self.told: list[int] = []  # the mappings whose lost reports the master took a marker of

    def session(self) -> None:
        self.sent, self.markers, self.acked = [], [], 0

    def send(self, queue: ReportQueue, limit: int) -> None:
        """What the link does (master_link._send_reports): merged, kept until taken, sent."""
        merged = queue.hold_next(limit, _merge)
        for item in merged:
            records = item.report.records
            self.sent.append([r.seq for r in records if r.op != "lost"])
            self.markers.append([item.report.mapping_id for r in records if r.op == "lost"])

    def take(self, queue: ReportQueue, upto: int) -> None:
        for message in self.sent[self.acked : upto]:
            self.taken += message
        for lost in self.markers[self.acked : upto]:
            self.told += lost
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
    assert queue.pending == 1 == box.pending  # the marker of the one dropped
    master.send(queue, 64)
    master.take(queue, 2)
    assert master.told == [1] and queue.pending == 0 == box.pending
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
    mapping_of: dict[int, int] = {}
    must_drop = 0
    for _ in range(400):
        step = rng.random()
        if step < 0.55:
            n = len(added)
            must_drop += queue.pending >= bound
            mapping_of[n] = 1 if rng.random() < 0.8 else 2
            queue.add(_report(n, mapping_of[n]))
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
    missing = set(added) - set(taken)
    assert len(missing) <= must_drop
    # the master was told of each mapping whose reports it missed (a marker, after restarts too),
    # and of no other: a report dropped after it was sent, then taken, needs none
    assert {mapping_of[n] for n in missing} == set(master.told)
    assert queue.pending == 0 == box.pending


def test_the_notes_of_dropped_reports_outlive_a_kill_of_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports are dropped while the master is down, the agent is killed: the next run tells
    the master once it takes reports, one marker a mapping (its highest dropped watermark)."""
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 4)
    box = _outbox(tmp_path)
    queue = ReportQueue(box, box.open())
    for n in range(8):
        queue.add(_report(n, mapping_id=1 + n % 2))  # 0..3 dropped: two of each mapping
    assert queue.dropped == 4 and queue.pending == 4
    box = _outbox(tmp_path)  # killed: the next run
    queue = ReportQueue(box, box.open())
    master = Master()
    master.send(queue, 64)
    master.take(queue, len(master.sent))
    assert master.taken == [4, 5, 6, 7] and master.told == []
    markers = [(item.report.mapping_id, item.report.watermark) for item in queue.unsent]
    assert markers == [(1, 0), (2, 0)]  # a marker moves no watermark (_lost_reports.marker)
    master.send(queue, 64)
    master.take(queue, len(master.sent))
    assert sorted(master.told) == [1, 2] and queue.pending == 0 == box.pending
    assert not (box.directory / "lost").exists()


class KilledOutbox(ReportOutbox):
    """A real outbox that copies its directory after each consume: what a kill -9 right after
    it leaves (a drop forgets its reports there)."""

    def __init__(self, base: Path, snapshots: Path, added: list[int]) -> None:
        super().__init__(base / "outbox", TGT, segment_bytes=2048)
        self.snapshots, self.added, self.master = snapshots, added, Master()

    def consume(self, frames: int) -> None:
        super().consume(frames)
        shot = self.snapshots / str(len(list(self.snapshots.iterdir())))
        shutil.copytree(self.directory.parent, shot / "outbox")
        (shot / "added").write_text(
            json.dumps([self.added[:-1], self.master.taken, self.master.told])
        )


@pytest.mark.parametrize("bound", ["count", "disk"])
def test_a_kill_right_after_a_drop_keeps_its_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    """Before, a drop forgot its report in the outbox (a `.done` written, a segment deleted)
    and saved its note in `lost` only at the end of `add`: a kill in between lost the report
    and its marker. Each report is of its own mapping, so each one missing needs its marker;
    checked from a copy of the outbox taken after every consume, as a kill there leaves it."""
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 6 if bound == "count" else 1000)
    shots = tmp_path / "shots"
    shots.mkdir()
    added: list[int] = []
    box = KilledOutbox(tmp_path / "run", shots, added)
    box.open()
    queue = ReportQueue(box, max_disk_bytes=4096, max_bytes=2000)  # spilled, dropped unread
    master = box.master
    for n in range(60):
        added.append(n)
        queue.add(_report(n, mapping_id=n + 1))
        if n % 7 == 3:  # some sent and taken: their consumes are copied too
            master.send(queue, 2)
            master.take(queue, len(master.sent))
    assert queue.dropped and len(list(shots.iterdir())) > 10
    for shot in sorted(shots.iterdir(), key=lambda p: int(p.name)):
        before, taken, told = json.loads((shot / "added").read_text())
        again = ReportOutbox(shot / "outbox", TGT, segment_bytes=2048)
        queue = ReportQueue(again, again.open())
        master = Master()
        while queue.unsent or queue.read_back():
            master.send(queue, 64)
            master.take(queue, len(master.sent))
        missing = set(before) - set(master.taken) - set(taken)
        assert {n + 1 for n in missing} <= {*told, *master.told}, f"kill at consume {shot.name}"


def test_a_report_dropped_after_it_was_sent_gets_a_marker_only_if_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound drops the oldest report, sent already (the master may be writing it). Before,
    it was noted at once: the master took it, and a marker followed all the same, so the
    mapping's sites were purged whole for nothing. Now the note waits on the session: withdrawn
    once the master takes the message, a note once the session ends without that (or after a
    kill: saved with the notes, a marker rather than a loss)."""
    monkeypatch.setattr(report_queue, "MAX_QUEUED_REPORTS", 4)
    box = _outbox(tmp_path)
    queue = ReportQueue(box, box.open())
    master = Master()
    for n in range(1, 5):
        queue.add(_report(n, mapping_id=n))
    master.send(queue, 1)  # report 1 goes out
    queue.add(_report(5, mapping_id=5))  # at the bound: report 1 goes, sent
    master.send(queue, 1)  # report 2 goes out
    queue.add(_report(6, mapping_id=6))  # and report 2
    assert queue.dropped == 2 and (box.directory / "lost").exists()
    copy = tmp_path / "killed"
    shutil.copytree(box.directory.parent, copy / "outbox")
    master.take(queue, 1)  # the master took report 1; report 2's message is never taken
    queue.session_over()
    master.session()
    while queue.unsent or queue.read_back():
        master.send(queue, 64)
        master.take(queue, len(master.sent))
    assert master.taken == [1, 3, 4, 5, 6] and master.told == [2]
    again = ReportOutbox(copy / "outbox", TGT, segment_bytes=2048)  # killed before the acks
    queue = ReportQueue(again, again.open())
    master = Master()
    while queue.unsent or queue.read_back():
        master.send(queue, 64)
        master.take(queue, len(master.sent))
    assert master.taken == [3, 4, 5, 6] and sorted(master.told) == [1, 2]


def test_reports_damaged_on_disk_that_a_drop_passes_are_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A drop past the disk bound passes unread reports by their heads; one whose frame header
    is damaged takes the rest of its segment with it, and those reports (mappings unknown: no
    marker can be noted) went without a word. Now it is warned of, with how many."""
    box = _outbox(tmp_path)
    box.open()
    queue = ReportQueue(box, max_bytes=1, max_disk_bytes=4096)  # one held, the rest unread
    for n in range(4):
        queue.add(_report(n))
    first = sorted(box.directory.glob("*.outbox"))[0]
    data = bytearray(first.read_bytes())
    offset = 0
    for _ in range(2):  # past frames 0 and 1: frame 2's header
        offset += 8 + int.from_bytes(data[offset : offset + 4], "big")
    data[offset : offset + 4] = (0xFFFFFFFF).to_bytes(4, "big")
    first.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="relaysync.agent.report_queue"):
        n = 4
        while not _warned(caplog) and n < 200:
            queue.add(_report(n))
            n += 1
    assert _warned(caplog)


def _warned(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        r.name == report_queue.__name__ and "passed unread by a drop" in r.getMessage()
        for r in caplog.records
    )
