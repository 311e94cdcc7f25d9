"""What a target lets land (watch/target_policy.py): symlinks out of the folder refused with the
remedy, o-w removed, and neither seen as a difference by the comparisons with the source, so
nothing is sent again for ever; and what a session holds between Checkpoints stays bounded."""

from __future__ import annotations

import os
import pathlib
import stat
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
import pytest
import xxhash

from relaysync.protocol.messages import (
    Ack,
    Checkpoint,
    CommitRecord,
    Delete,
    DigestRequest,
    DirListing,
    Erase,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    SetAttr,
    Symlink,
)
from relaysync.transfer.compare import Work, compare_trees
from relaysync.transfer.receiver import APPLIED_RECORDS_MAX, ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Entry, Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import hash_link
from relaysync.watch.target_policy import TargetPolicy, link_escapes
from relaysync.watch.watcher import FsEvent
from tests.unit.transfer._target_helpers import T0
from tests.unit.transfer._target_helpers import small_file as _small

Reports = list[tuple[int, Sequence[CommitRecord]]]


def _apply(folder: TargetFolder, messages: list, reports: Reports | None = None) -> list:
    sink = reports if reports is not None else []
    session = ReceiverSession(folder, "j", lambda w, r: sink.append((w, list(r))))
    try:
        return session.apply_batch(messages)
    finally:
        session.close()


def _compare(source: Manifest, folder: TargetFolder) -> list[Work]:
    """What the source's comparison with this target sends (transfer/compare.py)."""
    session = ReceiverSession(folder, "j", lambda *_: None)

    async def request(dirs: Sequence[str], hashes_only: bool, after: str) -> Sequence[DirListing]:
        ask = DigestRequest(mapping_id=1, dirs=tuple(dirs), hashes_only=hashes_only, after=after)
        (reply,) = session.apply_batch([ask])
        return reply.listings  # type: ignore[union-attr]

    work: list[Work] = []

    async def emit(items: Sequence[Work]) -> None:
        work.extend(items)

    anyio.run(compare_trees, source, request, emit)
    return work


def _restart(folder: TargetFolder) -> None:
    """The target agent's start-up scan of its folder (agent/_target_role.py _open_target)."""
    recorder = ChangeRecorder(
        folder.root,
        folder.manifest,
        PathFilter((), (), root=folder.root),
        hard_links=False,
        policy=folder.policy,
    )
    recorder.detect_and_apply([FsEvent(kind="rescan", path="")])


def _link(path: str, target: str) -> Entry:
    """A link as the source's manifest holds it."""
    return Entry(
        path=path, kind="l", mtime_ns=T0, mode=0o777, hash=hash_link(target), link_target=target
    )


def _source(tmp_path: Path, entries: list[Entry]) -> Manifest:
    manifest = Manifest(tmp_path / "source.db")
    manifest.put_many(entries)
    return manifest


@pytest.mark.parametrize(
    ("path", "target", "escapes"),
    [
        ("current", "releases/6", False),
        ("releases/6/shared", "../../shared", False),
        ("d/up", "..", False),
        ("passwd", "/etc/passwd", True),
        ("up", "../../../../", True),
        ("releases/6/x", "../../../x", True),
        ("l", "a/../b", True),  # where it leads depends on what `a` is
        ("l", "..", True),
    ],
)
def test_which_links_point_out_of_the_folder(path: str, target: str, escapes: bool) -> None:
    assert link_escapes(path, target) is escapes


LINKS = [("passwd", "/etc/passwd"), ("up", "../../../../"), ("d/key", "../../agent/key.pem")]


def test_a_link_out_of_the_folder_is_refused_with_the_remedy_and_one_inside_works(
    folder: TargetFolder,
) -> None:
    reports: Reports = []
    setup = [_small(1, "passwd", b"old version"), MakeDir(seq=2, path="d"), Checkpoint(seq=2)]
    assert _apply(folder, setup) == [Ack(mapping_id=1, watermark=2)]
    ops = [Symlink(seq=3 + i, path=p, target=t) for i, (p, t) in enumerate(LINKS)]
    ops += [
        MakeDir(seq=6, path="releases"),
        MakeDir(seq=7, path="releases/6"),
        Symlink(seq=8, path="current", target="releases/6"),
        Checkpoint(seq=8),
    ]
    assert _apply(folder, ops, reports) == [Ack(mapping_id=1, watermark=8)]
    refused = {r.path: r.error for _, records in reports for r in records if not r.ok}
    assert set(refused) == {p for p, _ in LINKS}
    for error in refused.values():
        assert "points outside the folder" in error
        assert 'set the mapping\'s symlink policy to "any" if you trust the source' in error
    for path, _ in LINKS:  # nothing there: not the link, nor the old version it replaced
        assert not os.path.lexists(folder.root / path)
    assert os.readlink(folder.root / "current") == "releases/6"


def test_the_any_policy_takes_every_link(folder: TargetFolder) -> None:
    folder.policy = TargetPolicy(symlinks="any")
    ops = [Symlink(seq=1, path="passwd", target="/etc/passwd"), Checkpoint(seq=1)]
    assert _apply(folder, ops) == [Ack(mapping_id=1, watermark=1)]
    assert os.readlink(folder.root / "passwd") == "/etc/passwd"


def test_a_refused_link_is_not_sent_again_by_a_comparison_nor_after_a_restart(
    folder: TargetFolder, tmp_path: Path
) -> None:
    reports: Reports = []
    entries = [Entry(path="d", kind="d", mode=0o755)] + [_link(p, t) for p, t in LINKS]
    entries.append(_link("current", "d"))
    source = _source(tmp_path, entries)
    ops = [MakeDir(seq=1, path="d", mode=0o755)]
    ops += [Symlink(seq=2 + i, path=p, target=t) for i, (p, t) in enumerate(LINKS)]
    ops += [Symlink(seq=9, path="current", target="d"), Checkpoint(seq=9)]
    assert _apply(folder, ops, reports) == [Ack(mapping_id=1, watermark=9)]
    assert _compare(source, folder) == []  # the old code sent the refused links again, each time
    _restart(folder)
    assert _compare(source, folder) == []
    assert not os.path.lexists(folder.root / "passwd")

    # the source removes one: the comparison's Erase takes it out of the manifest, once (and
    # the links' attributes, compared as the root is walked, are recorded, never refused)
    source.remove_tree("passwd")
    work = _compare(source, folder)
    assert Erase in [type(w.message) for w in work]
    assert all(w.message is not None for w in work)
    reports.clear()
    _apply(folder, [w.message for w in work] + [Checkpoint(seq=9)], reports)
    assert [r for _, records in reports for r in records if not r.ok] == []
    assert _compare(source, folder) == []
    assert folder.manifest.get("passwd") is None


def test_world_writable_bits_are_removed_and_no_comparison_sends_them_again(
    folder: TargetFolder, tmp_path: Path
) -> None:
    data = b"x" * 100
    digest = xxhash.xxh3_128(data).digest()
    ops = [
        MakeDir(seq=1, path="d", mode=0o777),
        _small(2, "d/small", b"s", mode=0o666),
        FileStart(seq=3, path="d/big", size=len(data), mode=0o646, mtime_ns=T0),
        FileChunk(seq=3, offset=0, data=data),
        FileEnd(seq=3, hash=digest),
        _small(4, "attr", b"a"),
        SetAttr(seq=5, path="attr", mode=0o757, mtime_ns=T0),
        Checkpoint(seq=5),
    ]
    assert _apply(folder, ops) == [Ack(mapping_id=1, watermark=5)]

    def mode(path: str) -> int:
        return stat.S_IMODE(os.lstat(folder.root / path).st_mode)

    on_disk = {p: mode(p) for p in ("d", "d/small", "d/big", "attr")}
    assert on_disk == {"d": 0o775, "d/small": 0o664, "d/big": 0o644, "attr": 0o755}
    asked = {"d": 0o777, "d/small": 0o666, "d/big": 0o646, "attr": 0o757}
    small_hash = xxhash.xxh3_128(b"s").digest()
    source = _source(
        tmp_path,
        [
            Entry(path="d", kind="d", mode=0o777),
            Entry(path="d/small", kind="f", size=1, mtime_ns=T0, mode=0o666, hash=small_hash),
            Entry(path="d/big", kind="f", size=100, mtime_ns=T0, mode=0o646, hash=digest),
            Entry(
                path="attr",
                kind="f",
                size=1,
                mtime_ns=T0,
                mode=0o757,
                hash=xxhash.xxh3_128(b"a").digest(),
            ),
        ],
    )
    assert _compare(source, folder) == []  # the old code's target held 0o666 etc.: nothing either
    _restart(folder)  # its start-up scan reads the disk through the policy
    assert {p: folder.manifest.get(p).mode for p in asked} == asked  # type: ignore[union-attr]
    assert _compare(source, folder) == []
    assert {p: mode(p) for p in on_disk} == on_disk


def test_the_start_up_scan_removes_bits_written_before_the_policy(folder: TargetFolder) -> None:
    folder.policy = TargetPolicy(mode_mask=0)  # keeps every bit, as this release's elder did
    ops = [MakeDir(seq=1, path="d", mode=0o777), _small(2, "d/f", b"f", 0o666), Checkpoint(seq=2)]
    assert _apply(folder, ops) == [Ack(mapping_id=1, watermark=2)]
    assert stat.S_IMODE(os.lstat(folder.root / "d/f").st_mode) == 0o666
    before = {e.path: e for e in folder.manifest.iter_entries()}
    folder.policy = TargetPolicy()
    _restart(folder)
    modes = {p: stat.S_IMODE(os.lstat(folder.root / p).st_mode) for p in ("d", "d/f")}
    assert modes == {"d": 0o775, "d/f": 0o664}
    # as the source asked (the scan only learns the files' inode numbers and ctimes)
    after = {
        e.path: msgspec.structs.replace(e, ino=0, ctime_ns=0)
        for e in folder.manifest.iter_entries()
    }
    assert after == before


def test_a_mask_of_zero_keeps_every_bit(folder: TargetFolder) -> None:
    folder.policy = TargetPolicy(mode_mask=0)
    ops = [MakeDir(seq=1, path="d", mode=0o777), _small(2, "d/f", b"f", 0o666), Checkpoint(seq=2)]
    assert _apply(folder, ops) == [Ack(mapping_id=1, watermark=2)]
    modes = {p: stat.S_IMODE(os.lstat(folder.root / p).st_mode) for p in ("d", "d/f")}
    assert modes == {"d": 0o777, "d/f": 0o666}


def _held() -> int:
    """Bytes traced now, but for the table of strings pathlib interns (the interpreter's own,
    resized as paths come, whoever holds them)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, pathlib.__file__)]
    )
    return sum(s.size for s in snapshot.statistics("filename"))


def test_ops_without_a_checkpoint_hold_memory_flat_and_are_reported(folder: TargetFolder) -> None:
    """30,000 ops and no Checkpoint: the old session held a record each (about 300 bytes: 6 MB
    more at the end than after the first 10,000, against the 1 MiB allowed; 9 MB in all, against
    4 MiB, measured with the bounds lifted). 15 times the records bound: flat over many reports.
    (It ran 100,000 ops, a third of a minute under coverage, for no more than this shows.)"""
    expected = {"next": 1, "watermark": 0}

    def report(watermark: int, records: Sequence[CommitRecord]) -> None:
        # each op reported once, in order, up to the watermark saved (checked as they come: a
        # list of them would be the test's own memory)
        assert [r.seq for r in records] == list(range(expected["next"], watermark + 1))
        expected["next"], expected["watermark"] = watermark + 1, watermark

    session = ReceiverSession(folder, "j", report)
    tracemalloc.start()
    try:
        seq = 0
        for batch_no in range(30):
            batch = [Delete(seq=seq + i + 1, path=f"x{seq + i}") for i in range(1000)]
            seq += 1000
            assert session.apply_batch(batch) == []
            assert len(session._applied) < APPLIED_RECORDS_MAX
            if batch_no == 9:
                early = _held()
        held = _held()
    finally:
        tracemalloc.stop()
        session.close()
    assert held - early < 2**20, (early, held)  # flat from 10,000 ops to 30,000
    assert held < 4 * 2**20, held
    assert folder.watermark("j") == expected["watermark"] >= seq - APPLIED_RECORDS_MAX


def test_a_record_over_the_byte_bound_is_reported_at_once(folder: TargetFolder) -> None:
    reports: Reports = []
    session = ReceiverSession(folder, "j", lambda w, r: reports.append((w, list(r))))
    try:
        session._applied.append(  # a record of a delete that removed many long paths
            msgspec.structs.replace(
                CommitRecord(seq=0, op="delete", path="big"), removed=("r" * 1000,) * 5000
            )
        )
        assert session.apply_batch([Delete(seq=1, path="x")]) == []
    finally:
        session.close()
    assert reports and reports[0][0] == 1 and folder.watermark("j") == 1
