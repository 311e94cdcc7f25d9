"""The relay spool: what a relay keeps of its parent's stream for its children."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaysync.errors import SpoolReset
from relaysync.protocol.messages import (
    AnyMessage,
    Checkpoint,
    Delete,
    DigestRequest,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
)
from relaysync.transfer.spool import Spool

HASH = b"h" * 16


def _file(seq: int, size: int = 10) -> list[AnyMessage]:
    return [
        FileStart(seq=seq, path=f"f{seq}", size=size, mode=0o644, mtime_ns=1),
        FileChunk(seq=seq, offset=0, data=b"x" * size),
        FileEnd(seq=seq, hash=HASH),
    ]


def _read_all(spool: Spool) -> list[AnyMessage]:
    out: list[AnyMessage] = []
    position = spool.start
    while True:
        messages, position = spool.read(position, spool.generation, 1 << 20)
        if not messages:
            return out
        out.extend(messages)


def test_spools_the_stream_after_the_relay_watermark(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin("j1", 5)
    assert spool.covers(5) and not spool.covers(4)
    spool.append([*_file(6), Delete(seq=7, path="old"), Checkpoint(seq=7)])
    got = _read_all(spool)
    assert [type(m).__name__ for m in got] == [
        "FileStart",
        "FileChunk",
        "FileEnd",
        "Delete",
        "Checkpoint",
    ]
    assert spool.head == 7


def test_a_comparison_resets_the_spool_and_its_checkpoint_is_the_new_base(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin("j1", 0)
    spool.append([*_file(1), Checkpoint(seq=1)])
    generation = spool.generation
    # catch-up work of a comparison: seq 0 ops, then the checkpoint of the source's head
    spool.append([DigestRequest(mapping_id=1, dirs=("",)), MakeDir(seq=0, path="d"), *_file(0)])
    with pytest.raises(SpoolReset):
        spool.read(spool.start, generation, 1 << 20)
    assert not spool.covers(1)
    spool.append([Checkpoint(seq=40)])
    # past the base only: a child at 40 may have got there before the comparison's work came
    assert spool.base == 40 and spool.covers(41) and not spool.covers(40)
    spool.append([*_file(41), Checkpoint(seq=41)])
    assert [m.seq for m in _read_all(spool) if isinstance(m, Checkpoint)] == [41]
    assert not Spool(tmp_path).covers(40)  # kept across a restart of the relay
    spool.begin("j1", 41)  # a new session from our parent, nothing cut: the same base
    assert not spool.covers(40) and spool.covers(41)


def test_a_comparison_cut_before_its_checkpoint_leaves_its_point_uncovered(
    tmp_path: Path,
) -> None:
    """Found in review: a comparison's work arrived, then the session broke (or an agent
    restarted) before its closing checkpoint; the next session's base at the same seq counted a
    child there as covered, and the next comparison found nothing to send. A release past the
    point, or a new journal, cover it again."""
    spool = Spool(tmp_path)
    spool.begin("j1", 0)
    spool.append([*_file(1), Checkpoint(seq=1), *_file(2), Checkpoint(seq=2)])
    assert spool.covers(2)
    spool.append([DigestRequest(mapping_id=1, dirs=("",)), MakeDir(seq=0, path="d")])
    spool.cut_unfinished()  # the session broke there
    reopened = Spool(tmp_path)  # and the relay restarted
    reopened.begin("j1", 2)
    assert not reopened.covers(2) and reopened.covers(3)
    reopened.begin("j2", 2)  # another source journal: a fresh start
    assert reopened.covers(2)


def test_a_comparison_that_found_nothing_keeps_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin("j1", 0)
    spool.append([*_file(1), Checkpoint(seq=1)])
    spool.append([DigestRequest(mapping_id=1, dirs=("",)), Checkpoint(seq=1)])
    assert spool.covers(0)
    assert len(_read_all(spool)) == 5


def test_a_comparison_closing_past_what_the_spool_saw_resets_it(tmp_path: Path) -> None:
    """Found by a stress run (test_relay_routes, a manual route): a relay committed a file in a
    session before it was a relay (its checkpoint never came), then its parent's comparison
    found nothing to send and closed at seq 1; the spool kept that checkpoint as an ordinary
    one, and its child, at 0, acknowledged seq 1 without the file. Such a checkpoint now marks
    where the spool starts covering: children behind it get a comparison with the relay."""
    spool = Spool(tmp_path)
    spool.begin("j1", 0)
    generation = spool.generation
    spool.append([DigestRequest(mapping_id=1, dirs=("",)), Checkpoint(seq=1)])
    assert not spool.covers(0) and not spool.covers(1) and spool.covers(2)
    assert _read_all(spool) == []  # no checkpoint for a child to take as covering seq 1
    with pytest.raises(SpoolReset):  # a child reading from before it starts again
        spool.read(0, generation, 1 << 20)


def test_a_broken_parent_session_cuts_the_unfinished_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin("j1", 0)
    spool.append([*_file(1), Checkpoint(seq=1)])
    spool.append(_file(2)[:2])  # the parent died mid-file
    generation, resets = spool.generation, spool.resets
    spool.cut_unfinished()
    with pytest.raises(SpoolReset):
        spool.read(spool.start, generation, 1 << 20)
    assert spool.resets == resets  # the same base: a child's comparison need not start again
    assert [type(m).__name__ for m in _read_all(spool)][-1] == "Checkpoint"


def test_reopening_after_a_crash_drops_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin("j1", 0)
    spool.append([*_file(1), Checkpoint(seq=1)])
    spool.append(_file(2)[:2])
    segment = next(tmp_path.glob("*.spool"))
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x10\x00partial")  # a frame header promising more than was written
    reopened = Spool(tmp_path)
    assert reopened.journal_id == "j1" and reopened.head == 1 and reopened.covers(0)
    assert [type(m).__name__ for m in _read_all(reopened)] == [
        "FileStart",
        "FileChunk",
        "FileEnd",
        "Checkpoint",
    ]


def test_release_drops_whole_segments_the_children_have(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)
    spool.begin("j1", 0)
    for seq in range(1, 6):
        spool.append([*_file(seq, size=200), Checkpoint(seq=seq)])
    assert len(list(tmp_path.glob("*.spool"))) == 5
    spool.release(3)
    assert len(list(tmp_path.glob("*.spool"))) == 2
    assert spool.covers(3) and not spool.covers(2)  # a child behind what was dropped must compare
    starts = [m.seq for m in _read_all(spool) if isinstance(m, FileStart)]
    assert starts == [4, 5]


def test_a_new_source_journal_voids_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin("j1", 0)
    spool.append([*_file(1), Checkpoint(seq=1)])
    spool.begin("j2", 0)
    assert spool.journal_id == "j2" and _read_all(spool) == []


def test_a_relay_behind_its_spool_restarts_it_at_its_watermark(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.begin("j1", 0)
    spool.append([*_file(1), Checkpoint(seq=1)])
    spool.begin("j1", 9)  # committed up to 9 without spooling 2..9 (e.g. the spool was cut)
    assert spool.base == 9 and not spool.covers(1)


def test_reopening_after_a_release_keeps_what_the_children_still_need(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)
    spool.begin("j1", 0)
    for seq in range(1, 6):
        spool.append([*_file(seq, size=200), Checkpoint(seq=seq)])
    spool.release(3)  # the first segment left now starts past 0
    reopened = Spool(tmp_path, segment_bytes=100)
    assert reopened.head == 5
    assert [m.seq for m in _read_all(reopened) if isinstance(m, FileStart)] == [4, 5]


def test_reopening_a_released_spool_whose_last_file_was_cut_short(tmp_path: Path) -> None:
    """Only a segment without a checkpoint is left (the relay died mid-file after a release)."""
    spool = Spool(tmp_path, segment_bytes=100)
    spool.begin("j1", 0)
    spool.append([*_file(1, size=200), Checkpoint(seq=1)])
    spool.append(_file(2, size=200)[:2])  # a new segment, the file cut short
    spool.release(1)
    assert len(list(tmp_path.glob("*.spool"))) == 1
    reopened = Spool(tmp_path, segment_bytes=100)
    assert reopened.head == 1 and reopened.covers(1) and not reopened.covers(0)
    assert _read_all(reopened) == []
    reopened.append([*_file(3), Checkpoint(seq=3)])
    assert [m.seq for m in _read_all(reopened) if isinstance(m, FileStart)] == [3]


def test_files_sent_again_cut_short_go_with_the_checkpoint_that_opened_them(
    tmp_path: Path,
) -> None:
    """A Checkpoint marked `again` opens files the source sent again (relay_retried.py): a
    stream broken before the one that closes them must not leave it in the spool, or a
    child's link would take what our parent replays next for files sent again."""
    spool = Spool(tmp_path)
    spool.begin("j1", 5)
    spool.append([*_file(6), Checkpoint(seq=6)])
    spool.append([Checkpoint(seq=6, again=True)])
    spool.append(_file(3)[:2])
    assert not spool.settled
    spool.cut_unfinished()
    assert _read_all(spool)[-1] == Checkpoint(seq=6)
    spool.append([Checkpoint(seq=6, again=True), *_file(3)])  # torn there, then reopened
    assert _read_all(Spool(tmp_path))[-1] == Checkpoint(seq=6)
    spool = Spool(tmp_path)
    spool.append([Checkpoint(seq=6, again=True), *_file(3), Checkpoint(seq=6)])
    assert spool.settled and spool.head == 6
    assert _read_all(spool)[-6:-4] == [Checkpoint(seq=6), Checkpoint(seq=6, again=True)]


def test_cut_unfinished_drops_bytes_past_the_recorded_end(tmp_path: Path) -> None:
    """Bytes a failed write left that the spool did not count (however they got there)."""
    spool = Spool(tmp_path / "spool")
    spool.begin("j", 0)
    first = [*_file(1, 1000), Checkpoint(seq=1)]
    spool.append(first)
    (segment,) = spool.directory.glob("*.spool")
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x01\x00torn")
    spool.cut_unfinished()
    assert segment.stat().st_size == spool.end - spool.start
    spool.begin("j", 1)
    second = [*_file(2, 1000), Checkpoint(seq=2)]
    spool.append(second)
    assert _read_all(spool) == first + second
