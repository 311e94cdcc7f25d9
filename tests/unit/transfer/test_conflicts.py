"""The newest-mtime rule of N:M jobs, applied by two members' receivers on one shared root."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import pytest
import xxhash

from relaysync.protocol.messages import (
    Checkpoint,
    CommitRecord,
    Delete,
    DirEntry,
    DirListing,
    Erase,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    Rename,
    Symlink,
)
from relaysync.transfer.compare import diff_listing
from relaysync.transfer.conflicts import NEWEST_MTIME, forget_missing, judge, session_for
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest

T0 = 1_700_000_000_000_000_000
_seqs = itertools.count(1)


class Member:
    """One member mapping's TargetFolder on the shared root, with its reported records."""

    def __init__(
        self,
        root: Path,
        state: Path,
        source: str,
        mapping_id: int,
        lock: threading.RLock,
        members: list[Member],
    ) -> None:
        self.folder = TargetFolder(
            mapping_id=mapping_id,
            source_node=source,
            root=root,
            manifest=Manifest(state / f"{source}.db"),
            durable=False,
            conflict=NEWEST_MTIME,
            lock=lock,
        )
        self.folder.owner_of = self._owner_of
        self.members = members
        self.records: list[CommitRecord] = []
        self.session = session_for(
            self.folder, f"journal-{source}", lambda _wm, recs: self.records.extend(recs)
        )

    def _owner_of(self, path: str, size: int, mtime_ns: int) -> str:
        for m in self.members:
            e = m.folder.manifest.get(path)
            if m is not self and e is not None and (e.size, e.mtime_ns) == (size, mtime_ns):
                return m.folder.source_node
        return ""

    def write(self, path: str, data: bytes, mtime_ns: int) -> None:
        seq = next(_seqs)
        self.session.apply_batch(
            [
                FileStart(seq=seq, path=path, size=len(data), mode=0o644, mtime_ns=mtime_ns),
                FileChunk(seq=seq, offset=0, data=data),
                FileEnd(seq=seq, hash=xxhash.xxh3_128(data).digest()),
                Checkpoint(seq=seq),
            ]
        )

    def op(self, message: object) -> None:
        self.session.apply_batch([message, Checkpoint(seq=message.seq)])  # type: ignore[attr-defined,list-item]

    def conflicts(self) -> list[tuple[str, str, str]]:
        return [(r.path, r.conflict, r.conflict_with) for r in self.records if r.conflict]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Member, Member]:
    root = tmp_path / "root"
    root.mkdir()
    members: list[Member] = []
    lock = threading.RLock()
    a = Member(root, tmp_path, "A", 1, lock, members)
    b = Member(root, tmp_path, "B", 2, lock, members)
    members += [a, b]
    return a, b


def _on_disk(root: Path, path: str) -> tuple[bytes, int]:
    return (root / path).read_bytes(), os.stat(root / path).st_mtime_ns


@pytest.mark.parametrize("first", ["A", "B"])
def test_newer_mtime_wins_in_either_order(pair: tuple[Member, Member], first: str) -> None:
    a, b = pair
    writes = {
        "A": lambda: a.write("x", b"from A, older", T0),
        "B": lambda: b.write("x", b"from B, newer", T0 + 5),
    }
    writes[first]()
    writes["B" if first == "A" else "A"]()
    assert _on_disk(a.folder.root, "x") == (b"from B, newer", T0 + 5)
    if first == "B":  # A's older version arrived second: skipped, a conflict A lost to B
        assert a.conflicts() == [("x", "older", "B")] and not b.conflicts()
    else:  # B's newer version replaced A's: a conflict B won
        assert b.conflicts() == [("x", "newer", "A")] and not a.conflicts()
    assert all(r.ok for r in a.records + b.records)


def test_older_write_is_skipped_and_not_resent_forever(pair: tuple[Member, Member]) -> None:
    a, b = pair
    b.write("x", b"newer", T0 + 9)
    a.write("x", b"older", T0)
    assert _on_disk(a.folder.root, "x")[0] == b"newer"
    entry = a.folder.manifest.get("x")  # A's own version, superseded: A's comparison finds it equal
    assert entry is not None and entry.hash == xxhash.xxh3_128(b"older").digest()
    assert not list(a.folder.root.glob(".relaysync*"))  # the loser's temp file is gone


@pytest.mark.parametrize("order", [("A", "B"), ("B", "A")])
def test_equal_mtimes_tie_break_by_hash_is_order_independent(
    tmp_path: Path, order: tuple[str, str]
) -> None:
    results = []
    for n in range(2):  # two targets, each receiving in the given order
        base = tmp_path / f"t{n}-{order[0]}"
        base.mkdir()
        root = base / "root"
        root.mkdir()
        members: list[Member] = []
        lock = threading.RLock()
        a, b = Member(root, base, "A", 1, lock, members), Member(root, base, "B", 2, lock, members)
        members += [a, b]
        data = {"A": b"version of A", "B": b"version of B"}
        by = {"A": a, "B": b}
        seq = order if n == 0 else tuple(reversed(order))
        for name in seq:
            by[name].write("same", data[name], T0)
        results.append((root / "same").read_bytes())
    want = max([b"version of A", b"version of B"], key=lambda d: xxhash.xxh3_128(d).digest())
    assert results == [want, want]
    assert judge(T0, b"\x00", None) == ""


def test_delete_of_a_file_another_source_rewrote_is_skipped(pair: tuple[Member, Member]) -> None:
    a, b = pair
    a.write("x", b"A's", T0)
    b.write("x", b"B's newer", T0 + 1)
    a.op(Delete(seq=next(_seqs), path="x"))
    assert (a.folder.root / "x").read_bytes() == b"B's newer"
    assert a.conflicts()[-1] == ("x", "rewritten", "B")
    assert a.folder.manifest.get("x") is None
    b.op(Delete(seq=next(_seqs), path="x"))  # its own version: removed
    assert not (a.folder.root / "x").exists()


def test_delete_of_a_directory_keeps_the_other_sources_files(pair: tuple[Member, Member]) -> None:
    a, b = pair
    a.write("d/a.txt", b"a", T0)
    b.write("d/b.txt", b"b", T0)
    a.op(Delete(seq=next(_seqs), path="d"))
    assert sorted(p.name for p in (a.folder.root / "d").iterdir()) == ["b.txt"]
    assert a.folder.manifest.get("d/a.txt") is None


def test_rename_onto_a_newer_file_deletes_the_old_name_only(pair: tuple[Member, Member]) -> None:
    a, b = pair
    a.write("old", b"A", T0)
    b.write("new", b"B newer", T0 + 3)
    a.op(Rename(seq=next(_seqs), path="old", new_path="new"))
    root = a.folder.root
    assert not (root / "old").exists() and (root / "new").read_bytes() == b"B newer"
    assert a.conflicts()[-1] == ("old", "older", "B") and a.records[-1].new_path == "new"


def test_a_symlink_never_replaces_a_directory_holding_another_sources_files(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    a.write("d/a.txt", b"A's file", T0)
    b.op(Symlink(seq=next(_seqs), path="d", target="elsewhere"))
    root = a.folder.root
    assert not os.path.islink(root / "d") and (root / "d" / "a.txt").read_bytes() == b"A's file"
    assert b.conflicts() == [("d", "kind", "")] and b.folder.manifest.get("d") is None


def test_a_directory_never_replaces_another_sources_file_or_link(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    a.write("f", b"A's file", T0)
    a.op(Symlink(seq=next(_seqs), path="l", target="nowhere"))
    b.op(MakeDir(seq=next(_seqs), path="f", mode=0o755))
    b.op(MakeDir(seq=next(_seqs), path="l", mode=0o755))
    root = a.folder.root
    assert (root / "f").read_bytes() == b"A's file" and os.readlink(root / "l") == "nowhere"
    assert b.conflicts() == [("f", "kind", "A"), ("l", "kind", "")]


def test_a_directory_renamed_onto_another_sources_directory_leaves_its_files(
    pair: tuple[Member, Member],
) -> None:
    """On B's side the name was free; here A's files are there: they stay, B's leave the old name
    and come to the new one with B's next comparison."""
    a, b = pair
    a.write("d2/a.txt", b"A's file", T0)
    b.op(MakeDir(seq=next(_seqs), path="d1", mode=0o755))
    b.write("d1/b.txt", b"B's file", T0)
    b.op(Rename(seq=next(_seqs), path="d1", new_path="d2"))
    root = a.folder.root
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["d2", "d2/a.txt"]
    assert b.conflicts() == [("d1", "kind", "")] and b.records[-1].new_path == "d2"
    assert not list(b.folder.manifest.iter_entries("d1")) and not list(
        b.folder.manifest.iter_entries("d2")
    )


def test_a_directory_renamed_onto_another_sources_file_leaves_it(
    pair: tuple[Member, Member],
) -> None:
    a, b = pair
    a.write("f", b"A's file", T0)
    b.op(MakeDir(seq=next(_seqs), path="d", mode=0o755))
    b.write("d/b.txt", b"B's file", T0)
    b.op(Rename(seq=next(_seqs), path="d", new_path="f"))
    root = a.folder.root
    assert (root / "f").read_bytes() == b"A's file" and not (root / "d").exists()
    assert b.conflicts() == [("d", "kind", "A")] and all(r.ok for r in b.records)


def test_a_directory_renamed_onto_an_empty_one_moves_whole(pair: tuple[Member, Member]) -> None:
    a, b = pair
    a.op(MakeDir(seq=next(_seqs), path="d2", mode=0o755))
    b.op(MakeDir(seq=next(_seqs), path="d1", mode=0o755))
    b.write("d1/b.txt", b"B's file", T0)
    b.op(Rename(seq=next(_seqs), path="d1", new_path="d2"))
    assert (a.folder.root / "d2" / "b.txt").read_bytes() == b"B's file" and not b.conflicts()
    assert b.folder.manifest.get("d2/b.txt") is not None


def test_erase_never_removes_another_sources_files(pair: tuple[Member, Member]) -> None:
    a, b = pair
    b.write("only-b", b"b", T0)
    a.op(Erase(seq=next(_seqs), path="", keep=()))
    assert (a.folder.root / "only-b").exists()


def test_compare_in_conflict_mode_sends_no_erase() -> None:
    mine = DirListing(path="", entries=())
    theirs = DirListing(path="", entries=(DirEntry(name="other", kind="f", hash=b"h", size=1),))
    assert any(w.message is not None for w in diff_listing(mine, theirs)[0])
    assert diff_listing(mine, theirs, erase=False) == ([], [])


def test_forget_missing_drops_only_vanished_entries(pair: tuple[Member, Member]) -> None:
    a, _b = pair
    a.write("keep", b"k", T0)
    a.write("gone", b"g", T0)
    (a.folder.root / "gone").unlink()
    assert forget_missing(a.folder) == 1
    assert a.folder.manifest.get("keep") is not None and a.folder.manifest.get("gone") is None
