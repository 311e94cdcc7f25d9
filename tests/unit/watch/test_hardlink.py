"""A file written through one of its hard links: every name in the tree shows the new content.

inotify reports CLOSE_WRITE (or ATTRIB) for the name that was opened only; the recorder finds
the other names by the inode numbers the manifest keeps.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from tests.unit.watch._replay import ModelTarget, assert_in_step, ev, settle, wait_for, watching

from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder


def _linked(tree: Path, manifest: Manifest) -> tuple[ChangeRecorder, ModelTarget]:
    (tree / "a").write_text("v1")
    (tree / "sub").mkdir()
    os.link(tree / "a", tree / "b")
    os.link(tree / "a", tree / "sub" / "c")
    rec = ChangeRecorder(tree, manifest, PathFilter())
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    return rec, target


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:  # in place, as `>>`, a log, a database: the inode stays
        f.write(text)


@pytest.mark.anyio
async def test_write_through_hard_link_updates_other_names_real_watcher(
    tree: Path, manifest: Manifest
) -> None:
    rec, target = _linked(tree, manifest)
    async with watching(tree) as batches:
        _append(tree / "a", "v2")
        await wait_for(lambda: any(e.path == "a" for b in batches for e in b))
        (tree / "marker").write_text("m")
        await wait_for(lambda: any(e.path == "marker" for b in batches for e in b))
    assert all(e.path in ("a", "marker") for b in batches for e in b)  # nothing for b, sub/c
    settle(rec, target, [e for b in batches for e in b])
    assert (tree / "b").read_text() == "v1v2"
    assert_in_step(tree, manifest, target)


def test_write_through_one_name_sends_every_name(tree: Path, manifest: Manifest) -> None:
    rec, target = _linked(tree, manifest)
    _append(tree / "sub" / "c", "v2")
    changes = settle(rec, target, [ev("write", "sub/c")])
    assert sorted((c.op, c.path) for c in changes) == [
        ("write", "a"),
        ("write", "b"),
        ("write", "sub/c"),
    ]
    assert_in_step(tree, manifest, target)


def test_chmod_through_one_name_updates_every_name(tree: Path, manifest: Manifest) -> None:
    rec, target = _linked(tree, manifest)
    os.chmod(tree / "b", 0o600)
    changes = settle(rec, target, [ev("attr", "b")])
    assert sorted((c.op, c.path) for c in changes) == [
        ("attr", "a"),
        ("attr", "b"),
        ("attr", "sub/c"),
    ]
    assert manifest.get("sub/c").mode == 0o600  # type: ignore[union-attr]


def test_new_link_to_a_known_file_is_followed(tree: Path, manifest: Manifest) -> None:
    """`ln a n` (the watcher reports a new link as an attribute event, which the recorder
    handles as a write): writes through n reach a too."""
    (tree / "a").write_text("v1")
    rec = ChangeRecorder(tree, manifest, PathFilter())
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])  # a, with one link then
    os.link(tree / "a", tree / "n")
    settle(rec, target, [ev("attr", "n")])
    _append(tree / "n", "v2")
    settle(rec, target, [ev("write", "n")])
    assert_in_step(tree, manifest, target)


def test_name_renamed_in_the_same_batch_is_updated(tree: Path, manifest: Manifest) -> None:
    """`mv b r; echo >> a` in one batch: the manifest still says b, the batch knows r."""
    rec, target = _linked(tree, manifest)
    os.rename(tree / "b", tree / "r")
    _append(tree / "a", "v2")
    detection = rec.detect([ev("move", "b", "r"), ev("write", "a")])
    assert detection.rest == []
    assert sorted((c.op, c.path) for c in detection.changes) == [
        ("rename", "b"),
        ("write", "a"),
        ("write", "r"),
        ("write", "sub/c"),
    ]
    rec.apply(detection.changes)
    target.apply(detection.changes)
    assert_in_step(tree, manifest, target)


def test_name_in_a_directory_renamed_in_the_same_batch_is_updated(
    tree: Path, manifest: Manifest
) -> None:
    """`mv sub s2; echo >> a`: where sub/c is now, the manifest says once the rename is applied."""
    rec, target = _linked(tree, manifest)
    os.rename(tree / "sub", tree / "s2")
    _append(tree / "a", "v2")
    events = [ev("move", "sub", "s2", is_dir=True), ev("write", "a")]
    assert rec.detect(events).rest == [*events[1:], ev("rescan", "s2", is_dir=True)]
    changes = settle(rec, target, events)
    assert ("write", "s2/c") in [(c.op, c.path) for c in changes]
    assert_in_step(tree, manifest, target)


def test_scan_that_finds_a_changed_linked_file_updates_its_other_names(
    tree: Path, manifest: Manifest
) -> None:
    """A scan (an unwatched directory, an overflow) that finds sub/c changed restats a and b."""
    rec, target = _linked(tree, manifest)
    _append(tree / "sub" / "c", "v2")
    settle(rec, target, [ev("rescan", "sub", is_dir=True)])
    assert_in_step(tree, manifest, target)


def test_file_replaced_by_an_equal_one_is_no_change_but_its_inode_is_kept(
    tree: Path, manifest: Manifest, tmp_path: Path
) -> None:
    """`tar x` over a tree: every file a new inode, most of them equal; only the inode is noted."""
    rec, target = _linked(tree, manifest)
    shutil.copy2(tree / "a", tmp_path / "a")
    os.unlink(tree / "a")
    shutil.copy2(tmp_path / "a", tree / "a")
    assert settle(rec, target, [ev("write", "a")]) == []
    assert manifest.get("a").ino == os.lstat(tree / "a").st_ino  # type: ignore[union-attr]
    assert manifest.paths_with_inode(os.lstat(tree / "b").st_ino) == ["b", "sub/c"]
    _append(tree / "b", "v2")
    settle(rec, target, [ev("write", "b")])  # a is no longer one of its names
    assert (tree / "a").read_text() == "v1"
    assert_in_step(tree, manifest, target)


def test_manifest_of_an_older_release_learns_inodes_from_the_start_up_scan(
    tree: Path, tmp_path: Path
) -> None:
    """A manifest without the `ino` column is migrated; the start-up scan fills the numbers in
    without a change to journal, and writes through a link are followed from then on."""
    (tree / "a").write_text("v1")
    os.link(tree / "a", tree / "b")
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript("""
        CREATE TABLE entries (path TEXT PRIMARY KEY, parent TEXT NOT NULL, name TEXT NOT NULL,
            kind TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            mode INTEGER NOT NULL, hash BLOB NOT NULL, link_target TEXT NOT NULL) WITHOUT ROWID;
        CREATE INDEX entries_parent ON entries (parent, name);
    """)
    fresh = Manifest(tmp_path / "fresh.db")
    ChangeRecorder(tree, fresh, PathFilter()).detect_and_apply([ev("rescan", "")])
    for e in fresh.iter_entries():
        old.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.path, "", e.path, e.kind, e.size, e.mtime_ns, e.mode, e.hash, e.link_target),
        )
    old.commit()
    old.close()
    fresh.close()
    manifest = Manifest(db)
    try:
        assert [e.ino for e in manifest.iter_entries()] == [0, 0]
        rec = ChangeRecorder(tree, manifest, PathFilter())
        assert rec.detect_and_apply([ev("rescan", "")]) == []  # nothing to journal
        assert manifest.paths_with_inode(os.lstat(tree / "a").st_ino) == ["a", "b"]
        target = ModelTarget()
        target.state = {"a": ("f", manifest.get("a").hash), "b": ("f", manifest.get("b").hash)}  # type: ignore[union-attr]
        _append(tree / "a", "v2")
        settle(rec, target, [ev("write", "a")])
        assert_in_step(tree, manifest, target)
    finally:
        manifest.close()
