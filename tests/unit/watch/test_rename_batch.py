"""A directory renamed or deleted, then touched below, in one batch of events.

Batches merge easily (one read of the kernel queue; the source joins the batches queued while
it journaled), and the manifest holds the old tree until the rename is applied: the recorder
must not judge what follows by it. Each test replays the changes on a model target.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tests.unit.watch._replay import (
    ModelTarget,
    assert_in_step,
    disk_state,
    ev,
    settle,
    wait_for,
    watching,
)

from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder


def _setup(tree: Path, manifest: Manifest) -> tuple[ChangeRecorder, ModelTarget]:
    (tree / "d").mkdir()
    (tree / "d" / "f").write_text("f")
    (tree / "d" / "g").write_text("g")
    rec = ChangeRecorder(tree, manifest, PathFilter())
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    assert target.state == disk_state(tree)
    return rec, target


@pytest.mark.anyio
async def test_rename_dir_then_delete_child_real_watcher(tree: Path, manifest: Manifest) -> None:
    rec, target = _setup(tree, manifest)
    async with watching(tree) as batches:
        os.rename(tree / "d", tree / "e")
        os.unlink(tree / "e" / "f")  # a deploy: mv release.tmp release && rm release/.lock
        await wait_for(lambda: any(e.kind == "delete" for b in batches for e in b))
    events = [e for b in batches for e in b]
    settle(rec, target, events)
    assert_in_step(tree, manifest, target)


def test_rename_dir_then_delete_child(tree: Path, manifest: Manifest) -> None:
    rec, target = _setup(tree, manifest)
    os.rename(tree / "d", tree / "e")
    os.unlink(tree / "e" / "f")
    events = [ev("move", "d", "e", is_dir=True), ev("delete", "e/f")]
    first = rec.detect(events)
    assert [(c.op, c.path) for c in first.changes] == [("rename", "d")]
    # judged once the rename is applied, and so is the renamed directory (changed unseen?)
    assert first.rest == [*events[1:], ev("rescan", "e", is_dir=True)]
    rec.apply(first.changes)
    target.apply(first.changes)
    assert [(c.op, c.path) for c in settle(rec, target, first.rest)] == [("delete", "e/f")]
    assert_in_step(tree, manifest, target)


def test_rename_dir_then_recreate_it(tree: Path, manifest: Manifest) -> None:
    """`mv current old && mkdir current` (rotation): the new `current` reaches the targets."""
    rec, target = _setup(tree, manifest)
    os.rename(tree / "d", tree / "e")
    (tree / "d").mkdir()
    settle(rec, target, [ev("move", "d", "e", is_dir=True), ev("rescan", "d", is_dir=True)])
    assert_in_step(tree, manifest, target)


def test_rename_dir_then_copy_back(tree: Path, manifest: Manifest) -> None:
    """`mv d e && cp -a e d`: the copy has the old files' mtimes, yet it is sent."""
    rec, target = _setup(tree, manifest)
    os.rename(tree / "d", tree / "e")
    shutil.copytree(tree / "e", tree / "d")  # copy2: mtimes kept, like cp -a
    settle(rec, target, [ev("move", "d", "e", is_dir=True), ev("rescan", "d", is_dir=True)])
    assert_in_step(tree, manifest, target)


def test_rename_dir_then_rename_child(tree: Path, manifest: Manifest) -> None:
    rec, target = _setup(tree, manifest)
    os.rename(tree / "d", tree / "e")
    os.rename(tree / "e" / "f", tree / "e" / "h")
    changes = settle(rec, target, [ev("move", "d", "e", is_dir=True), ev("move", "e/f", "e/h")])
    assert [(c.op, c.path, c.new_path) for c in changes] == [
        ("rename", "d", "e"),
        ("rename", "e/f", "e/h"),
    ]
    assert_in_step(tree, manifest, target)


def test_delete_dir_then_copy_back(tree: Path, manifest: Manifest, tmp_path: Path) -> None:
    """`rm -rf d && cp -a backup d`: the scan of the new d must not find the old d's files."""
    rec, target = _setup(tree, manifest)
    shutil.copytree(tree / "d", tmp_path / "backup")
    shutil.rmtree(tree / "d")
    shutil.copytree(tmp_path / "backup", tree / "d")
    events = [
        ev("delete", "d/f"),
        ev("delete", "d/g"),
        ev("delete", "d", is_dir=True),
        ev("rescan", "d", is_dir=True),
    ]
    settle(rec, target, events)
    assert_in_step(tree, manifest, target)


def test_file_deleted_then_back_with_same_stat_before_a_full_rescan(
    tree: Path, manifest: Manifest, tmp_path: Path
) -> None:
    """`rm d/f && cp -p saved d/f`, then a queue overflow (rescan of everything) in one batch."""
    rec, target = _setup(tree, manifest)
    shutil.copy2(tree / "d" / "f", tmp_path / "saved")
    (tree / "d" / "f").unlink()
    shutil.copy2(tmp_path / "saved", tree / "d" / "f")
    settle(rec, target, [ev("delete", "d/f"), ev("rescan", "", is_dir=True)])
    assert_in_step(tree, manifest, target)


def test_common_batches_are_detected_in_one_call(tree: Path, manifest: Manifest) -> None:
    """Writes, file renames and a whole `rm -rf` (children before parents) need no early stop:
    they stay one journal write."""
    rec, target = _setup(tree, manifest)
    (tree / "x" / "y").mkdir(parents=True)
    (tree / "x" / "y" / "1").write_text("1")
    (tree / "x" / "z").mkdir()
    (tree / "x" / "z" / "2").write_text("2")
    settle(rec, target, [ev("rescan", "")])
    (tree / "d" / "g").write_text("g2")
    os.rename(tree / "d" / "g", tree / "d" / "h")
    (tree / "d" / "h").write_text("g3")
    shutil.rmtree(tree / "x")
    events = [
        ev("write", "d/g"),
        ev("move", "d/g", "d/h"),
        ev("write", "d/h"),
        ev("delete", "x/y/1"),
        ev("delete", "x/y", is_dir=True),
        ev("delete", "x/z/2"),
        ev("delete", "x/z", is_dir=True),
        ev("delete", "x", is_dir=True),
    ]
    detection = rec.detect(events)
    assert detection.rest == []
    rec.apply(detection.changes)
    target.apply(detection.changes)
    assert_in_step(tree, manifest, target)
