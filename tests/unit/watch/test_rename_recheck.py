"""A rename is journaled from the manifest's entry: what the disk holds under the new name counts.

A write whose close-write is read with the rename, or before it but detected after it (the
source busy journaling), finds its old name gone; below a renamed directory the filter may judge
the files otherwise. Each test reads the events of a real Watcher, detects them once the disk
has its final state (as a source that lags does), replays the changes on a model target, and
checks that the target and the manifest agree with the disk (review s24, #1 and #3).
"""

from __future__ import annotations

import os
import shutil
import time
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

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import scan_tree

pytestmark = pytest.mark.anyio


def _start(tree: Path, manifest: Manifest, flt: PathFilter) -> tuple[ChangeRecorder, ModelTarget]:
    rec = ChangeRecorder(tree, manifest, flt)
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    return rec, target


def _moved(batches: list[list[FsEvent]], path: str) -> bool:
    return any(e.kind == "move" and e.path == path for b in batches for e in b)


def _events(batches: list[list[FsEvent]]) -> list[FsEvent]:
    return [e for b in batches for e in b]


def _assert_filtered_in_step(
    tree: Path, manifest: Manifest, target: ModelTarget, flt: PathFilter
) -> None:
    wanted = {p: v for p, v in disk_state(tree).items() if flt.accepts(p, is_dir=v[0] == "d")}
    assert target.state == wanted
    assert scan_tree(tree, manifest, flt) == []


async def test_a_file_appended_then_renamed_is_sent_with_its_new_content(
    tree: Path, manifest: Manifest
) -> None:
    """`echo >> app.log && mv app.log app.log.1`: was a bare rename of the old 6 bytes."""
    (tree / "app.log").write_text("line1\n")
    rec, target = _start(tree, manifest, PathFilter())
    async with watching(tree) as batches:
        with open(tree / "app.log", "a") as f:
            f.write("line2\n")
        os.rename(tree / "app.log", tree / "app.log.1")
        await wait_for(lambda: _moved(batches, "app.log"))
    changes = settle(rec, target, _events(batches))
    assert [(c.op, c.path) for c in changes] == [("rename", "app.log"), ("write", "app.log.1")]
    assert changes[1].base_hash == changes[0].entry.hash  # a delta from the renamed version
    assert_in_step(tree, manifest, target)


async def test_a_file_rewritten_then_renamed_in_a_later_batch_is_sent(
    tree: Path, manifest: Manifest
) -> None:
    """The write and the rename in separate batches, both detected after the rename."""
    (tree / "d").mkdir()
    (tree / "d" / "a.txt").write_text("version 1")
    rec, target = _start(tree, manifest, PathFilter())
    async with watching(tree) as batches:
        (tree / "d" / "a.txt").write_text("version 2, longer")
        await wait_for(lambda: any(e.path == "d/a.txt" for e in _events(batches)))
        os.rename(tree / "d" / "a.txt", tree / "d" / "b.txt")
        await wait_for(lambda: _moved(batches, "d/a.txt"))
    settle(rec, target, _events(batches))
    assert_in_step(tree, manifest, target)


async def test_a_directory_written_in_then_renamed_is_sent_with_its_new_content(
    tree: Path, manifest: Manifest
) -> None:
    (tree / "d").mkdir()
    (tree / "d" / "a.txt").write_text("version 1")
    rec, target = _start(tree, manifest, PathFilter())
    async with watching(tree) as batches:
        (tree / "d" / "a.txt").write_text("version 2, longer")
        os.rename(tree / "d", tree / "e")
        await wait_for(lambda: _moved(batches, "d"))
    settle(rec, target, _events(batches))
    assert_in_step(tree, manifest, target)


async def test_a_staging_directory_filled_then_renamed_into_place_is_sent_whole(
    tree: Path, manifest: Manifest, tmp_path: Path
) -> None:
    """`cp -r build/. staging/ && mv staging live`, staging already known: the last files
    written were never journaled."""
    (tree / "staging").mkdir()
    build = tmp_path / "build"
    (build / "css").mkdir(parents=True)
    for i in range(20):
        (build / f"page{i:02}.html").write_text(f"page {i}")
    (build / "css" / "site.css").write_text("body {}")
    rec, target = _start(tree, manifest, PathFilter())
    async with watching(tree) as batches:
        shutil.copytree(build, tree / "staging", dirs_exist_ok=True)
        os.rename(tree / "staging", tree / "live")
        await wait_for(lambda: _moved(batches, "staging"))
    settle(rec, target, _events(batches))
    assert_in_step(tree, manifest, target)
    assert target.state["live/page19.html"][0] == "f"


async def test_a_swap_into_an_included_directory_follows_the_filter(
    tree: Path, manifest: Manifest
) -> None:
    """`include=["^public/"]`, `mv public public.old; mv staging public`: the new release was
    never journaled, and the old one stayed on the targets though no longer included."""
    flt = PathFilter(include=[r"^public/"])
    (tree / "public").mkdir()
    (tree / "public" / "index.html").write_text("v1")
    (tree / "staging").mkdir()
    (tree / "staging" / "index.html").write_text("v2 release")
    rec, target = _start(tree, manifest, flt)
    assert "public/index.html" in target.state and "staging/index.html" not in target.state
    async with watching(tree, flt) as batches:
        os.rename(tree / "public", tree / "public.old")
        os.rename(tree / "staging", tree / "public")
        await wait_for(lambda: _moved(batches, "staging"))
    settle(rec, target, _events(batches))
    _assert_filtered_in_step(tree, manifest, target, flt)
    assert target.state["public/index.html"] == disk_state(tree)["public/index.html"]


async def test_a_directory_renamed_out_of_an_exclude_pattern_is_sent(
    tree: Path, manifest: Manifest
) -> None:
    """`exclude=[r"\\.tmp/"]` (what is in `*.tmp` directories), `mv release.tmp release`."""
    flt = PathFilter(exclude=[r"\.tmp/"])
    (tree / "release.tmp").mkdir()
    (tree / "release.tmp" / "index.html").write_text("new release")
    rec, target = _start(tree, manifest, flt)
    async with watching(tree, flt) as batches:
        os.rename(tree / "release.tmp", tree / "release")
        await wait_for(lambda: _moved(batches, "release.tmp"))
    settle(rec, target, _events(batches))
    _assert_filtered_in_step(tree, manifest, target, flt)
    assert "release/index.html" in target.state


def test_a_big_directory_renamed_unchanged_is_one_rename_and_no_write(
    tree: Path, manifest: Manifest
) -> None:
    """The rescan after a directory rename compares with the manifest: stat only, no resend."""
    earlier = time.time_ns() - 10 * 10**9
    for i in range(20):
        sub = tree / "big" / f"s{i:02}"
        sub.mkdir(parents=True)
        for j in range(50):
            (sub / f"f{j}").write_text(f"{i}/{j}")
            os.utime(sub / f"f{j}", ns=(earlier, earlier))
    rec, target = _start(tree, manifest, PathFilter())
    os.rename(tree / "big", tree / "big2")
    first = rec.detect([ev("move", "big", "big2", is_dir=True)])
    assert [(c.op, c.path) for c in first.changes] == [("rename", "big")]
    assert first.rest == [ev("rescan", "big2", is_dir=True)]  # once the rename is applied
    rec.apply(first.changes)
    target.apply(first.changes)
    assert settle(rec, target, first.rest) == []
    assert_in_step(tree, manifest, target)


def test_the_watchers_rescan_of_a_renamed_directory_is_not_doubled(
    tree: Path, manifest: Manifest
) -> None:
    (tree / "d").mkdir()
    (tree / "d" / "f").write_text("f")
    rec, _ = _start(tree, manifest, PathFilter())
    os.rename(tree / "d", tree / "e")
    events = [ev("move", "d", "e", is_dir=True), ev("rescan", "e", is_dir=True)]
    assert rec.detect(events).rest == events[1:]


def test_a_file_moved_into_a_directory_removed_since_is_a_delete(
    tree: Path, manifest: Manifest
) -> None:
    """`mkdir d; mv f d/x; rm -r d`, detected after the fact, with d gone before its watch was
    added (so no event of d/x): the rename went into a directory the disk no longer has, nothing
    made d, and the targets and the manifest kept d/x for ever under no directory (a review's
    fuzzing of events read after the fact)."""
    (tree / "f").write_text("f")
    rec, target = _start(tree, manifest, PathFilter())
    (tree / "d").mkdir()
    os.rename(tree / "f", tree / "d" / "x")
    shutil.rmtree(tree / "d")
    settle(rec, target, [ev("rescan", "d", is_dir=True), ev("move", "f", "d/x")])
    settle(rec, target, [ev("delete", "d", is_dir=True)])
    assert_in_step(tree, manifest, target)
    assert manifest.get("d/x") is None


async def test_a_file_renamed_onto_a_name_that_is_a_directory_since_brings_what_it_holds(
    tree: Path, manifest: Manifest
) -> None:
    """`mv a b` (a file), then b a directory holding e: the rename's recheck found a directory at
    b and recorded it, not what it holds (a review's fuzzing: b/e never reached the targets)."""
    (tree / "a").write_text("a")
    rec, target = _start(tree, manifest, PathFilter())
    os.rename(tree / "a", tree / "b")
    os.unlink(tree / "b")
    (tree / "b").mkdir()
    (tree / "b" / "e").write_text("e")
    changes = settle(rec, target, [ev("move", "a", "b")])
    assert ("write", "b/e") in [(c.op, c.path) for c in changes]
    assert_in_step(tree, manifest, target)


def test_a_renamed_file_s_new_name_that_is_a_directory_is_one_before_what_follows_below_it(
    tree: Path, manifest: Manifest
) -> None:
    """`mv a b; rm b; mkdir -p b/c; echo > b/c/e`: the move's recheck must record the directory
    b at once, not only queue its rescan, or the next event's `mkdir b/c` goes under the file b
    the batch still holds (a target refuses it: not a directory)."""
    (tree / "a").write_text("a")
    rec, target = _start(tree, manifest, PathFilter())
    os.rename(tree / "a", tree / "b")
    os.unlink(tree / "b")
    (tree / "b" / "c").mkdir(parents=True)
    (tree / "b" / "c" / "e").write_text("e")
    changes = settle(rec, target, [ev("move", "a", "b"), ev("rescan", "b/c", is_dir=True)])
    ops = [(c.op, c.path) for c in changes]
    assert ops.index(("delete", "b")) < ops.index(("mkdir", "b")) < ops.index(("mkdir", "b/c"))
    assert_in_step(tree, manifest, target)


def test_a_move_under_a_name_the_batch_holds_as_a_file_is_not_a_rename_under_a_file(
    tree: Path, manifest: Manifest
) -> None:
    """`mv e .tmp; mkdir e; mv .tmp e/a; rm -r e; echo 22 > e`, the new file e seen first (a
    rescan's): the move into e/a went as a rename under the file e (a target refuses it; the
    manifest kept e/a below a file)."""
    (tree / "e").write_text("1")
    rec, target = _start(tree, manifest, PathFilter())
    os.rename(tree / "e", tree / ".tmp")
    (tree / "e").mkdir()
    os.rename(tree / ".tmp", tree / "e" / "a")
    shutil.rmtree(tree / "e")
    (tree / "e").write_text("22")
    events = [
        ev("write", "e"),
        ev("move", "e", ".tmp"),
        ev("rescan", "e", is_dir=True),
        ev("move", ".tmp", "e/a"),
        ev("delete", "e", is_dir=True),
        ev("write", "e"),
    ]
    changes = settle(rec, target, events)
    assert not any(c.op == "rename" and c.new_path == "e/a" for c in changes)
    assert_in_step(tree, manifest, target)
