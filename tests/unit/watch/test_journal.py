"""Tests for watch.journal: durability, recovery, release, group commit and coalescing."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaysync.errors import JournalCorrupt, JournalGap
from relaysync.watch.changes import JournalRecord, PendingChange
from relaysync.watch.journal import LEASE_SEQS, Journal
from relaysync.watch.manifest import Entry


def w(path: str, content: bytes = b"c", base: bytes = b"") -> PendingChange:
    return PendingChange(
        op="write",
        path=path,
        base_hash=base,
        entry=Entry(path=path, kind="f", size=len(content), hash=content),
    )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_append_read_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    assert (j.last_seq, j.first_seq) == (0, 1)
    records = j.append([w("a"), w("b")])
    assert [r.seq for r in records] == [1, 2] and records[0].time_ns > 0
    j.append([PendingChange(op="rename", path="a", new_path="c")])
    assert [r.path for r in j.read(1)] == ["b", "a"]
    assert j.read(0, limit=2) == records
    journal_id = j.journal_id
    j.close()
    j = Journal(tmp_path / "j")
    assert (j.journal_id, j.last_seq, j.first_seq) == (journal_id, 3, 1)
    assert j.read(2)[0].new_path == "c"
    assert j.append([w("d")])[0].seq == 4
    j.close()
    assert Journal(tmp_path / "other").journal_id != journal_id


def test_segments_release_and_restart(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=2000, fsync=False)
    for i in range(50):
        j.append([w(f"f{i}", b"x" * 50) for _ in range(4)])
    assert len(segments(tmp_path)) > 5 and j.last_seq == 200
    assert [r.seq for r in j.read(150, limit=10)] == list(range(151, 161))
    j.release(120)
    assert j.first_seq == 121
    assert j.read(0, limit=1, skip_released=True)[0].seq == 121
    assert all(int(p.stem) > 100 for p in segments(tmp_path)[1:])
    j.close()
    j = Journal(tmp_path, segment_bytes=2000, fsync=False)
    assert (j.first_seq, j.last_seq) == (121, 200)
    j.release(200)
    assert (j.first_seq, j.last_seq) == (201, 200) and j.read(200) == []
    j.close()
    j = Journal(tmp_path, fsync=False)
    assert (j.first_seq, j.last_seq) == (201, 200)
    assert j.append([w("next")])[0].seq == 201
    j.close()


def test_a_read_from_below_the_release_reports_the_gap(tmp_path: Path) -> None:
    """A reader behind the release (a target that reopened at a lower watermark while the
    release ran) is told, not handed the records after the release as if they came next."""
    j = Journal(tmp_path, segment_bytes=2000, fsync=False)
    j.append([w(f"f{i}", b"x" * 50) for i in range(100)])
    assert j.covers(0) and j.covers(100) and not j.covers(101)  # 101: seqs never handed out
    j.release(60)
    assert (j.covers(59), j.covers(60)) == (False, True)
    with pytest.raises(JournalGap) as gap:
        j.read(59)
    assert "after seq 59" in str(gap.value) and "after seq 60" in str(gap.value)
    assert j.read(60, limit=1)[0].seq == 61
    assert j.read(59, limit=1, skip_released=True)[0].seq == 61  # tools: from what is kept
    j.release(100)  # all of it: still a gap below, none at the end
    with pytest.raises(JournalGap):
        j.read(99)
    assert j.read(100) == [] and j.covers(100)
    j.close()


def test_torn_tail_is_truncated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    j = Journal(tmp_path)
    j.append([w("a"), w("b")])
    j.close()
    [seg] = segments(tmp_path)
    good_size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(struct.pack(">II", 100, 0) + b"half a record")
    j = Journal(tmp_path)
    assert j.last_seq == 2 and seg.stat().st_size == good_size
    assert "torn tail" in caplog.text
    assert j.append([w("c")])[0].seq == 3
    assert [r.path for r in j.read(0)] == ["a", "b", "c"]
    j.close()


def test_bad_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append([w("a")])
    j.append([w("b")])
    j.close()
    [seg] = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    j = Journal(tmp_path)
    assert j.last_seq == 1
    j.close()


def test_corruption_in_the_middle_raises(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append([w("first", b"AAAA"), w("second"), w("third")])
    j.close()
    [seg] = segments(tmp_path)
    data = seg.read_bytes()
    pos = data.index(b"AAAA")
    seg.write_bytes(data[:pos] + b"AAAB" + data[pos + 4 :])
    with pytest.raises(JournalCorrupt, match="corrupt at offset 0"):
        Journal(tmp_path)


def test_corruption_in_an_old_segment_raises_on_read(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=500, fsync=False)
    for i in range(20):
        j.append([w(f"f{i}", b"Q" * 40)])
    j.close()
    first = segments(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[data.index(b"Q" * 40)] = ord("R")
    first.write_bytes(bytes(data))
    j = Journal(tmp_path, segment_bytes=500, fsync=False)
    with pytest.raises(JournalCorrupt):
        j.read(0)
    j.close()


def test_ten_thousand_appends_in_batches(tmp_path: Path) -> None:
    """All numbered and read back. How fast: bench/bookkeeping.py (`journal_append`)."""
    j = Journal(tmp_path)
    for b in range(100):
        j.append([w(f"dir/file{b}-{i}") for i in range(100)])
    assert j.last_seq == 10_000
    assert len(j.read(0, limit=20_000)) == 10_000
    j.close()


@pytest.mark.anyio
async def test_append_async_group_commit(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    results: dict[int, list[JournalRecord]] = {}

    async def one(n: int) -> None:
        results[n] = await j.append_async([w(f"p{n}-0"), w(f"p{n}-1")])

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(one, n)
    assert j.last_seq == 100
    assert j.commit_count < 50  # several callers shared a write + fsync
    for n, records in results.items():
        assert [r.path for r in records] == [f"p{n}-0", f"p{n}-1"]
        assert records[1].seq == records[0].seq + 1
    assert sorted(r.seq for rs in results.values() for r in rs) == list(range(1, 101))
    j.close()


def test_read_coalesced_keeps_base_and_renames(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync=False)
    j.append([w("a", b"1", b"0"), w("a", b"2", b"1"), w("a", b"3", b"2")])
    [kept] = j.read_coalesced(0)
    assert kept.seq == 3 and kept.base_hash == b"0"
    j.append([w("d/x", b"4"), PendingChange(op="rename", path="d", new_path="e"), w("d/x", b"5")])
    assert [r.seq for r in j.read_coalesced(3)] == [4, 5, 6]
    j.close()


# --- read_coalesced replays like the full sequence (property) ---

PATHS = ["a", "b", "d/a", "d/b", "e/a"]


def apply(state: dict[str, bytes], rec: JournalRecord) -> None:
    def drop(p: str) -> None:
        for k in [k for k in state if k == p or k.startswith(p + "/")]:
            del state[k]

    if rec.op == "write":
        assert rec.entry is not None
        state[rec.path] = rec.entry.hash
    elif rec.op == "delete":
        drop(rec.path)
    elif rec.op == "rename":
        moved = {k: v for k, v in state.items() if k == rec.path or k.startswith(rec.path + "/")}
        if moved:
            drop(rec.path)
            drop(rec.new_path)
            for k, v in moved.items():
                state[rec.new_path + k[len(rec.path) :]] = v


op_strategy = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS)),
    st.tuples(st.just("delete"), st.sampled_from(PATHS + ["d", "e"])),
    st.tuples(st.just("rename"), st.sampled_from(["a", "b", "d", "e", "d/a", "e/a"])),
)


def to_change(i: int, op: tuple[str, str]) -> PendingChange:
    kind, path = op
    if kind == "write":
        return w(path, str(i).encode())
    if kind == "delete":
        return PendingChange(op="delete", path=path)
    other = {"a": "b", "b": "a", "d": "e", "e": "d", "d/a": "e/a", "e/a": "d/b"}[path]
    return PendingChange(op="rename", path=path, new_path=other)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op_strategy, max_size=40), limit=st.integers(1, 50))
def test_read_coalesced_replays_like_full(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str]], limit: int
) -> None:
    j = Journal(tmp_path_factory.mktemp("j"), fsync=False)
    j.append([to_change(i, op) for i, op in enumerate(ops)])
    full: dict[str, bytes] = {}
    for rec in j.read(0, limit=1000):
        apply(full, rec)
    coalesced: dict[str, bytes] = {}
    after = 0
    while batch := j.read_coalesced(after, limit):
        assert batch[-1].seq == min(after + limit, j.last_seq)
        for rec in batch:
            apply(coalesced, rec)
        after = batch[-1].seq
    assert coalesced == full
    j.close()


def test_records_of_journals_without_times_still_read(tmp_path: Path) -> None:
    """Journals written before records had time_ns: the field defaults to 0 on read."""
    import zlib

    import msgspec

    directory = tmp_path / "j"
    directory.mkdir()
    payloads = [msgspec.msgpack.encode({"seq": s, "op": "delete", "path": f"p{s}"}) for s in (1, 2)]
    frames = b"".join(struct.pack(">II", len(p), zlib.crc32(p)) + p for p in payloads)
    (directory / f"{1:020d}.seg").write_bytes(frames)
    j = Journal(directory)
    assert [(r.seq, r.path, r.time_ns) for r in j.read(0)] == [(1, "p1", 0), (2, "p2", 0)]
    assert j.append([w("new")])[0].time_ns > 0  # new records get a time, in the same segment
    j.close()


def _lose_last_record(directory: Path) -> None:
    """What a machine crash does to a journal written without fsync: its last record is gone."""
    seg = segments(directory)[-1]
    data = seg.read_bytes()
    offset, last = 0, 0
    while offset < len(data):
        last = offset
        offset += 8 + struct.unpack(">I", data[offset : offset + 4])[0]
    seg.write_bytes(data[:last])


def test_fast_journal_left_open_across_a_reboot_starts_a_new_id(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync=False, boot_id="boot-1")
    j.append([w("a"), w("b"), w("c")])
    j.release(3)  # every target acked seq 3: "released" reaches the disk (a rename) ...
    old_id = j.journal_id  # ... the "machine crash": never closed; its last record never did
    _lose_last_record(tmp_path)

    j = Journal(tmp_path, fsync=False, boot_id="boot-2")
    # a target acked seq 3 of the old id (the master's job log and purge ordering know the
    # change by it): the next change gets a seq never handed out before, and is read
    assert j.journal_id != old_id and j.previous_id == old_id
    assert j.first_seq == j.last_seq + 1 and j.last_seq >= 3 and j.read(0, skip_released=True) == []
    [d] = j.append([w("d")])
    assert d.seq > 3 and [r.path for r in j.read(0, skip_released=True)] == ["d"]
    assert len(segments(tmp_path)) == 1
    j.close()
    again = Journal(tmp_path, fsync=False, boot_id="boot-3")  # closed cleanly: nothing to distrust
    assert (again.journal_id, again.previous_id, again.last_seq) == (j.journal_id, None, d.seq)
    again.close()


def test_a_fast_journal_reserves_its_seqs_durably_before_it_hands_them_out(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync=False, boot_id="boot-1")
    for i in range(
        LEASE_SEQS + 10
    ):  # past one lease: the second is taken before its first seq goes
        j.append([w(f"f{i}")])
    assert int((tmp_path / "lease").read_text()) >= j.last_seq
    for seg in segments(tmp_path):  # the crash took every record
        seg.write_bytes(b"")
    reopened = Journal(tmp_path, fsync=False, boot_id="boot-2")
    assert reopened.append([w("new")])[0].seq > LEASE_SEQS + 10


@pytest.mark.parametrize(
    ("fsync", "closed", "boot"),
    [
        (
            False,
            False,
            "boot-1",
        ),  # kill -9 of the agent: the page cache survived, the tail is there
        (False, True, "boot-2"),  # stopped cleanly, then a reboot: close() made it durable
        (True, False, "boot-2"),  # safe: every append was fsynced
    ],
)
def test_journal_keeps_its_id_when_nothing_can_be_lost(
    tmp_path: Path, fsync: bool, closed: bool, boot: str
) -> None:
    j = Journal(tmp_path, fsync=fsync, boot_id="boot-1")
    j.append([w("a"), w("b")])
    if closed:
        j.close()
    reopened = Journal(tmp_path, fsync=False, boot_id=boot)
    assert (reopened.journal_id, reopened.previous_id, reopened.last_seq) == (j.journal_id, None, 2)
    reopened.close()


def test_journal_from_before_the_boot_mark_keeps_its_id(tmp_path: Path) -> None:
    j = Journal(tmp_path, fsync=False, boot_id="boot-1")
    j.append([w("a")])
    (tmp_path / "boot").unlink()  # as an older release left it
    assert Journal(tmp_path, fsync=False, boot_id="boot-2").journal_id == j.journal_id


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\0\0\0\0", b"3\0\0", b" \n", b"-7", b"\xff\xfe"],
    ids=["empty", "zeros", "digit-then-zeros", "blank", "negative", "not-utf8"],
)
def test_a_torn_released_file_resends_rather_than_stopping_the_journal(
    tmp_path: Path, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """What a crash can leave of `released` on a filesystem that does not order the rename after
    the data (zero-filled, cut short) reads as lost: every retained record is read again (a
    target gets it twice, never not at all). Was: ValueError from Journal(), so the source
    mapping could not be built, at every retry (it used to stop the whole agent)."""
    j = Journal(tmp_path, segment_bytes=2000)
    for i in range(20):
        j.append([w(f"f{i}", b"x" * 50) for _ in range(4)])
    j.release(30)
    retained = int(segments(tmp_path)[0].stem)
    assert 1 < retained <= j.first_seq == 31
    j.close()
    (tmp_path / "released").write_bytes(garbage)

    j = Journal(tmp_path, segment_bytes=2000)
    assert j.first_seq == retained  # not past any record a target may lack
    assert [r.seq for r in j.read(0, limit=1000, skip_released=True)] == list(range(retained, 81))
    assert j.append([w("g")])[0].seq == 81
    assert "released" in caplog.text
    j.release(40)
    j.close()
    assert Journal(tmp_path, segment_bytes=2000).first_seq == 41


@pytest.fixture
def disk_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What the journal makes durable, in order: ("fsync", path of a file or directory) and
    ("replace", destination). A power cut cannot be run in a test: this spy on os.fsync and
    os.replace (both still do their work) is the one seam."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        calls.append(("replace", os.path.realpath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_state_a_journal_keeps_durable_survives_a_power_cut_after_its_rename(
    tmp_path: Path, disk_writes: list[tuple[str, str]]
) -> None:
    """journal.id, boot, lease (fast journals too) and released (safe ones) are written to a
    temp file, fsynced, and renamed over the old one; the rename is a write of the directory.
    Was: never fsynced, so after a power cut the directory could still name the old file: a
    `boot` mark of "closed" lets a fast journal that lost its tail keep its id, and an old
    `lease` lets it hand out again seqs that targets have acknowledged."""
    safe = Journal(tmp_path / "safe", boot_id="boot-1")
    safe.append([w("a"), w("b")])
    safe.release(1)
    safe.close()
    fast = Journal(tmp_path / "fast", fsync=False, boot_id="boot-1")
    fast.append([w("a")])  # takes a lease
    fast.close()

    renamed = [(i, dst) for i, (op, dst) in enumerate(disk_writes) if op == "replace"]
    assert {(Path(d).parent.name, Path(d).name) for _, d in renamed} >= {
        (journal, name)
        for journal in ("safe", "fast")
        for name in ("journal.id", "boot", "released")
    } | {("fast", "lease")}
    for i, dst in renamed:
        after = disk_writes[i + 1 :]
        until_next = next((j for j, (op, _) in enumerate(after) if op == "replace"), len(after))
        assert ("fsync", str(Path(dst).parent)) in after[:until_next], f"{dst}: rename not durable"


def test_a_fast_journal_releases_without_an_fsync(
    tmp_path: Path, disk_writes: list[tuple[str, str]]
) -> None:
    """Fast durability writes `released` without fsync, on purpose: a lost one only resends."""
    fast = Journal(tmp_path, fsync=False, boot_id="boot-1")
    fast.append([w("a"), w("b")])
    disk_writes.clear()
    fast.release(1)
    assert disk_writes == [("replace", os.path.realpath(tmp_path / "released"))]
    fast.close()
