"""A rename a scan sees first (its events came later, or never: the source was down) goes to the
targets as a rename, not as a delete and the file whole; what is not one file renamed as it
was stays a delete and a write. Each test replays the changes on a model target."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.unit.watch._replay import ModelTarget, assert_in_step, disk_state, ev, settle

from relaysync.watch.changes import PendingChange
from relaysync.watch.content_cache import ContentCache, MappingContent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder


@pytest.fixture
def recorded(tree: Path, manifest: Manifest) -> tuple[ChangeRecorder, ModelTarget]:
    (tree / "d").mkdir()
    (tree / "d" / "a.bin").write_bytes(os.urandom(5000))
    (tree / "b.bin").write_bytes(os.urandom(5000))
    rec = ChangeRecorder(tree, manifest, PathFilter())
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    return rec, target


def _ops(changes: list[PendingChange]) -> list[tuple[str, str, str]]:
    return [(c.op, c.path, c.new_path) for c in changes]


def test_a_file_renamed_is_a_rename_in_the_scan(
    tree: Path, manifest: Manifest, recorded: tuple[ChangeRecorder, ModelTarget]
) -> None:
    rec, target = recorded
    os.rename(tree / "d" / "a.bin", tree / "kept.bin")
    changes = settle(rec, target, [ev("rescan", "")])
    assert _ops(changes) == [("rename", "d/a.bin", "kept.bin")]
    assert_in_step(tree, manifest, target)
    # the watcher's own events of it, read after the scan, find nothing to do
    assert settle(rec, target, [ev("move", "d/a.bin", "kept.bin")]) == []


def test_a_file_renamed_into_a_new_directory_follows_its_mkdir(
    tree: Path, manifest: Manifest, recorded: tuple[ChangeRecorder, ModelTarget]
) -> None:
    rec, target = recorded
    (tree / "new" / "deep").mkdir(parents=True)
    os.rename(tree / "b.bin", tree / "new" / "deep" / "b.bin")
    changes = settle(rec, target, [ev("rescan", "")])
    assert _ops(changes) == [
        ("mkdir", "new", ""),
        ("mkdir", "new/deep", ""),
        ("rename", "b.bin", "new/deep/b.bin"),
    ]
    assert_in_step(tree, manifest, target)


def test_a_rename_onto_a_file_replaces_it_as_the_watcher_s_would(
    tree: Path, manifest: Manifest, recorded: tuple[ChangeRecorder, ModelTarget]
) -> None:
    rec, target = recorded
    replaced = manifest.get("b.bin")
    assert replaced is not None
    os.rename(tree / "d" / "a.bin", tree / "b.bin")
    changes = settle(rec, target, [ev("rescan", "")])
    assert _ops(changes) == [("rename", "d/a.bin", "b.bin")]
    assert changes[0].base_hash == replaced.hash
    assert_in_step(tree, manifest, target)


def test_a_file_renamed_and_changed_goes_whole(
    tree: Path, manifest: Manifest, recorded: tuple[ChangeRecorder, ModelTarget]
) -> None:
    rec, target = recorded
    os.rename(tree / "b.bin", tree / "c.bin")
    with open(tree / "c.bin", "r+b") as f:  # same inode, same size, other bytes
        f.write(b"changed")
    changes = settle(rec, target, [ev("rescan", "")])
    assert sorted(_ops(changes)) == [("delete", "b.bin", ""), ("write", "c.bin", "")]
    assert_in_step(tree, manifest, target)


def test_a_renamed_file_s_new_mode_is_not_lost(
    tree: Path, manifest: Manifest, recorded: tuple[ChangeRecorder, ModelTarget]
) -> None:
    rec, target = recorded
    os.rename(tree / "b.bin", tree / "c.bin")
    os.chmod(tree / "c.bin", 0o600)
    changes = settle(rec, target, [ev("rescan", "")])
    assert sorted(_ops(changes)) == [("delete", "b.bin", ""), ("write", "c.bin", "")]
    entry = manifest.get("c.bin")
    assert entry is not None and entry.mode == 0o600


def test_a_file_replaced_by_a_directory_is_not_paired(
    tree: Path, manifest: Manifest, recorded: tuple[ChangeRecorder, ModelTarget]
) -> None:
    rec, target = recorded
    os.rename(tree / "b.bin", tree / "c.bin")
    (tree / "b.bin").mkdir()
    (tree / "b.bin" / "x").write_text("x")
    changes = settle(rec, target, [ev("rescan", "")])
    assert ("rename", "b.bin", "c.bin") not in _ops(changes)
    assert_in_step(tree, manifest, target)


def test_two_new_names_of_one_inode_are_not_guessed_between(
    tree: Path, manifest: Manifest, recorded: tuple[ChangeRecorder, ModelTarget]
) -> None:
    rec, target = recorded
    os.link(tree / "b.bin", tree / "c.bin")
    os.rename(tree / "b.bin", tree / "e.bin")
    changes = settle(rec, target, [ev("rescan", "")])
    assert all(c.op != "rename" for c in changes)
    assert_in_step(tree, manifest, target)


def test_a_path_the_batch_changed_already_is_not_paired(
    tree: Path, manifest: Manifest, recorded: tuple[ChangeRecorder, ModelTarget]
) -> None:
    rec, target = recorded
    os.rename(tree / "b.bin", tree / "c.bin")
    # the batch's write of c.bin comes first: the scan's view of it is the batch's
    changes = settle(rec, target, [ev("write", "c.bin"), ev("rescan", "")])
    assert sorted(_ops(changes)) == [("delete", "b.bin", ""), ("write", "c.bin", "")]
    assert target.state == disk_state(tree)


def test_what_the_scan_read_for_a_paired_rename_is_not_kept_for_the_links(
    tree: Path, manifest: Manifest
) -> None:
    (tree / "a.bin").write_bytes(os.urandom(5000))
    content = MappingContent(ContentCache(), 1, lambda: 1)
    rec = ChangeRecorder(tree, manifest, PathFilter(), cache=content)
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    os.rename(tree / "a.bin", tree / "c.bin")
    (tree / "new.bin").write_bytes(os.urandom(5000))
    changes = settle(rec, target, [ev("rescan", "")])
    assert sorted(_ops(changes)) == [("rename", "a.bin", "c.bin"), ("write", "new.bin", "")]
    moved, new = manifest.get("c.bin"), manifest.get("new.bin")
    assert moved is not None and new is not None
    assert content.take("c.bin", moved.hash) is None  # no link reads it: it took the budget
    assert content.take("new.bin", new.hash) is not None  # sent: kept as before


def test_a_mass_delete_with_a_rename_asks_the_manifest_per_new_file_not_per_delete(
    tree: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(40):
        (tree / f"f{i}").write_bytes(os.urandom(100))
    rec = ChangeRecorder(tree, manifest, PathFilter())
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    for i in range(39):
        os.unlink(tree / f"f{i}")
    os.rename(tree / "f39", tree / "kept")
    asked: list[str] = []
    get = manifest.get
    monkeypatch.setattr(manifest, "get", lambda path: (asked.append(path), get(path))[1])
    changes = settle(rec, target, [ev("rescan", "")])
    assert ("rename", "f39", "kept") in _ops(changes)
    assert len([c for c in changes if c.op == "delete"]) == 39
    assert len(asked) < 5, asked  # 40 before: one a delete
    assert_in_step(tree, manifest, target)
