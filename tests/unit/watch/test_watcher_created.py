"""A regular file that appears with no write through its new name is reported: a name linked
while its other name goes (`ln tmp/x new/x; rm tmp/x`: maildir delivery, link deploys), a file
made by open(O_CREAT|O_RDONLY) (flock(1)'s lock files) or mknod(S_IFREG).

Found in review (notes/s34/watch_review.md #1, #6): the watcher reported a CREATE only when the
file had another link when the event was handled; by then the other name was gone, and no
close-write follows a link(2), so such files reached targets at the next full rescan only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.unit.watch._replay import ModelTarget, assert_in_step, ev, settle, wait_for, watching

from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder

MESSAGES = 50


def _recorded(tree: Path, manifest: Manifest) -> tuple[ChangeRecorder, ModelTarget]:
    rec = ChangeRecorder(tree, manifest, PathFilter())
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    return rec, target


@pytest.mark.anyio
async def test_linked_then_unlinked_files_are_reported(tree: Path, manifest: Manifest) -> None:
    (tree / "tmp").mkdir()
    (tree / "new").mkdir()
    rec, target = _recorded(tree, manifest)
    names = [f"new/m{i}" for i in range(MESSAGES)]
    async with watching(tree) as batches:
        for i in range(MESSAGES):
            (tree / f"tmp/m{i}").write_text(f"message {i}")
            os.link(tree / f"tmp/m{i}", tree / f"new/m{i}")
            os.unlink(tree / f"tmp/m{i}")
        await wait_for(lambda: set(names) <= {e.path for b in batches for e in b})
    settle(rec, target, [e for b in batches for e in b])
    assert target.state["new/m7"][0] == "f"
    assert_in_step(tree, manifest, target)


@pytest.mark.anyio
async def test_files_created_without_writing_are_reported(tree: Path, manifest: Manifest) -> None:
    rec, target = _recorded(tree, manifest)
    async with watching(tree) as batches:
        os.close(os.open(tree / "lock", os.O_CREAT | os.O_RDONLY, 0o644))
        os.mknod(tree / "made", 0o644 | stat.S_IFREG)
        await wait_for(lambda: {"lock", "made"} <= {e.path for b in batches for e in b})
    settle(rec, target, [e for b in batches for e in b])
    assert set(target.state) == {"lock", "made"}
    assert_in_step(tree, manifest, target)


@pytest.mark.anyio
async def test_files_written_at_once_are_reported_once_as_closed(tree: Path) -> None:
    """The CREATE of a file written and closed is dropped at its CLOSE_WRITE: a write burst is
    read (and hashed) once per file, as a close-write, never as an "attr" first."""
    async with watching(tree) as batches:
        for i in range(200):
            (tree / f"f{i}").write_bytes(b"x" * i)
        (tree / "empty").touch()  # open(O_CREAT|O_WRONLY), closed unwritten: a CLOSE_WRITE too
        await wait_for(lambda: sum(len(b) for b in batches) >= 201)
        # reported once quiet, no sooner than a CREATE made before it and left pending
        os.close(os.open(tree / "probe", os.O_CREAT | os.O_RDONLY, 0o644))
        await wait_for(lambda: any(e.path == "probe" for b in batches for e in b))
    events = [(e.kind, e.path) for b in batches for e in b if e.path != "probe"]
    assert sorted(events) == sorted([("write", f"f{i}") for i in range(200)] + [("write", "empty")])
