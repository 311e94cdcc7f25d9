"""Tests for watch.recorder: events to pending changes, and the manifest kept in step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.unit.watch._replay import ev

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.changes import PendingChange
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import make_entry, scan_tree


def ops(changes: list[PendingChange]) -> list[tuple[str, str, str]]:
    return [(c.op, c.path, c.new_path) for c in changes]


@pytest.fixture
def rec(tree: Path, manifest: Manifest) -> ChangeRecorder:
    return ChangeRecorder(tree, manifest, PathFilter(exclude=[r"\.bak$"]))


def settle(rec: ChangeRecorder, events: list[FsEvent]) -> list[PendingChange]:
    return rec.detect_and_apply(events)


def test_write_new_then_identical_then_attr(
    tree: Path, rec: ChangeRecorder, manifest: Manifest
) -> None:
    (tree / "f").write_text("one")
    [c] = settle(rec, [ev("write", "f")])
    assert c.op == "write" and c.base_hash == b"" and manifest.get("f") == c.entry
    assert rec.detect([ev("write", "f")]).changes == []
    os.chmod(tree / "f", 0o600)
    [c] = settle(rec, [ev("write", "f")])
    assert c.op == "attr" and manifest.get("f").mode == 0o600  # type: ignore[union-attr]
    old_hash = c.entry.hash  # type: ignore[union-attr]
    (tree / "f").write_text("two")
    [c] = settle(rec, [ev("attr", "f")])
    assert c.op == "write" and c.base_hash == old_hash


def test_write_of_vanished_file_is_skipped(rec: ChangeRecorder) -> None:
    assert rec.detect([ev("write", "gone")]).changes == []


def test_write_creates_missing_parents_first(tree: Path, rec: ChangeRecorder) -> None:
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    assert ops(rec.detect([ev("write", "a/b/f")]).changes) == [
        ("mkdir", "a", ""),
        ("mkdir", "a/b", ""),
        ("write", "a/b/f", ""),
    ]


def test_delete_only_if_known(tree: Path, rec: ChangeRecorder, manifest: Manifest) -> None:
    assert rec.detect([ev("delete", "nope")]).changes == []
    (tree / "f").write_text("x")
    settle(rec, [ev("write", "f")])
    (tree / "f").unlink()
    assert ops(settle(rec, [ev("delete", "f")])) == [("delete", "f", "")]
    assert manifest.get("f") is None


def test_symlink_event(tree: Path, rec: ChangeRecorder) -> None:
    os.symlink("target", tree / "l")
    [c] = rec.detect([ev("symlink", "l")]).changes
    assert c.op == "symlink" and c.entry is not None and c.entry.link_target == "target"


def test_move_of_known_dir_is_one_rename(
    tree: Path, rec: ChangeRecorder, manifest: Manifest
) -> None:
    (tree / "d").mkdir()
    (tree / "d" / "x").write_text("x")
    settle(rec, [ev("rescan", "")])
    os.rename(tree / "d", tree / "e")
    changes = settle(rec, [ev("move", "d", "e", is_dir=True)])
    assert ops(changes) == [("rename", "d", "e")]
    assert changes[0].entry is not None and changes[0].entry.path == "e"
    assert manifest.get("e/x") is not None and manifest.get("d/x") is None
    assert scan_tree(tree, manifest, PathFilter()) == []


def test_move_from_unknown_or_excluded_is_rescan(tree: Path, rec: ChangeRecorder) -> None:
    (tree / "f.bak").write_text("x")
    os.rename(tree / "f.bak", tree / "f")
    assert ops(rec.detect([ev("move", "f.bak", "f")]).changes) == [("write", "f", "")]


def test_move_to_excluded_is_delete(tree: Path, rec: ChangeRecorder) -> None:
    (tree / "f").write_text("x")
    settle(rec, [ev("write", "f")])
    os.rename(tree / "f", tree / "f.bak")
    assert ops(rec.detect([ev("move", "f", "f.bak")]).changes) == [("delete", "f", "")]


def test_rescan_orders_parents_first_and_deletes_dirs_once(
    tree: Path, rec: ChangeRecorder, manifest: Manifest
) -> None:
    (tree / "old" / "sub").mkdir(parents=True)
    (tree / "old" / "sub" / "f").write_text("x")
    settle(rec, [ev("rescan", "")])
    for p in ("old/sub/f",):
        (tree / p).unlink()
    (tree / "old" / "sub").rmdir()
    (tree / "old").rmdir()
    (tree / "new" / "deep").mkdir(parents=True)
    (tree / "new" / "deep" / "g").write_text("g")
    changes = settle(rec, [ev("rescan", "")])
    assert ops(changes) == [
        ("delete", "old", ""),
        ("mkdir", "new", ""),
        ("mkdir", "new/deep", ""),
        ("write", "new/deep/g", ""),
    ]
    assert manifest.count() == 3


def test_apply_accepts_journal_records_and_is_idempotent(
    tree: Path, rec: ChangeRecorder, manifest: Manifest, tmp_path: Path
) -> None:
    from relaysync.watch.journal import Journal

    (tree / "f").write_text("x")
    journal = Journal(tmp_path / "j", fsync=False)
    records = journal.append(rec.detect([ev("write", "f")]).changes)
    rec.apply(records)
    rec.apply(records)
    assert manifest.get("f") == make_entry(tree, "f")
    journal.close()


def test_a_delete_event_for_a_path_that_is_there_deletes_nothing(
    tree: Path, rec: ChangeRecorder, manifest: Manifest
) -> None:
    """An event's word against the disk's (a watch left labelled with a name it no longer
    watches reported `rm` of a directory moved away): the disk decides."""
    (tree / "d").mkdir()
    (tree / "d" / "f").write_text("live")
    settle(rec, [ev("rescan", "d")])
    assert settle(rec, [ev("delete", "d/f"), ev("delete", "d")]) == []
    assert manifest.get("d/f") is not None and manifest.get("d") is not None


def test_a_name_deleted_and_made_again_is_written_not_deleted(
    tree: Path, rec: ChangeRecorder, manifest: Manifest
) -> None:
    (tree / "f").write_text("old")
    settle(rec, [ev("write", "f")])
    (tree / "f").write_text("made again")  # `rm f; echo ... > f` seen as one late delete
    assert ops(settle(rec, [ev("delete", "f")])) == [("write", "f", "")]
    (tree / "f").unlink()
    assert ops(settle(rec, [ev("delete", "f")])) == [("delete", "f", "")]
