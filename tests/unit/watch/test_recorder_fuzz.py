"""Random edits of a small tree, their events read after the fact with a rescan among them (as a
source that lags, or whose closing rescan runs while the watcher's events wait, sees them), the
changes replayed on a strict model target: it must end as the disk is, with no rename of a
version it does not hold and no change into a parent it lacks, and the manifest must agree with
the disk. A review's fuzzing found two recorder defects this way (test_rename_recheck.py)."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.watch._replay import ModelTarget, disk_state, ev

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.changes import PendingChange
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import scan_tree

NAMES = ("a", "b", "c", "d", "e")


class StrictTarget(ModelTarget):
    """A model target that notes what a real one would refuse or make up: a rename of a file
    it holds at another version (or not at all), a change into a missing parent."""

    def __init__(self, state: dict[str, tuple[str, bytes]]) -> None:
        super().__init__()
        self.state = dict(state)
        self.problems: list[str] = []

    def _parent(self, path: str, op: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and self.state.get(parent, ("?",))[0] != "d":
            self.problems.append(f"{op} {path}: no directory {parent}")

    def apply(self, changes: Sequence[PendingChange]) -> None:
        """Replay as the model target does, each change checked first."""
        for c in changes:
            if c.op == "rename":
                assert c.entry is not None
                held = self.state.get(c.path)
                if c.entry.kind == "f" and held != ("f", c.entry.hash):
                    self.problems.append(f"rename {c.path} -> {c.new_path}: held {held}")
                self._parent(c.new_path, "rename")
            elif c.op != "delete":
                assert c.entry is not None
                self._parent(c.path, c.op)
                held = self.state.get(c.path)
                if held is not None and held[0] != c.entry.kind:
                    self.problems.append(f"{c.op} {c.path} over a {held[0]} not deleted")
                    self._take(c.path)
            super().apply([c])


def _tree(root: Path) -> tuple[list[str], list[str]]:
    files, dirs = [], [""]
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() and not p.is_symlink():
            dirs.append(rel)
        elif p.is_file() and not p.is_symlink():
            files.append(rel)
    return files, dirs


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _edit(rnd: random.Random, root: Path, log: list[FsEvent]) -> None:
    """One to six edits, each logged as the event a watcher gives for it."""
    for _ in range(rnd.randint(1, 6)):
        files, dirs = _tree(root)
        op = rnd.choice(("mv", "mv", "mvdir", "rm", "rmdir", "new", "mkdir", "ln", "swap"))
        if op == "mv" and files:
            src, dst = rnd.choice(files), _join(rnd.choice(dirs), rnd.choice(NAMES))
            if not (root / dst).exists() or (root / dst).is_file():
                os.rename(root / src, root / dst)
                log.append(ev("move", src, dst))
        elif op == "mvdir" and len(dirs) > 1:
            src, dst = rnd.choice(dirs[1:]), _join(rnd.choice(dirs), rnd.choice(NAMES))
            if not dst.startswith(src + "/") and dst != src and not (root / dst).exists():
                os.rename(root / src, root / dst)
                log.append(ev("move", src, dst, is_dir=True))
        elif op == "rm" and files:
            path = rnd.choice(files)
            os.unlink(root / path)
            log.append(ev("delete", path))
        elif op == "rmdir" and len(dirs) > 1:
            path = rnd.choice(dirs[1:])
            shutil.rmtree(root / path)
            log.append(ev("delete", path, is_dir=True))
        elif op in ("new", "mkdir"):
            path = _join(rnd.choice(dirs), rnd.choice(NAMES))
            if not (root / path).exists():
                if op == "new":
                    (root / path).write_bytes(rnd.randbytes(rnd.randint(1, 64)))
                    log.append(ev("write", path))
                else:
                    (root / path).mkdir()
                    log.append(ev("rescan", path, is_dir=True))
        elif op == "ln" and files:
            path = _join(rnd.choice(dirs), rnd.choice(NAMES))
            if not (root / path).exists():
                os.link(root / rnd.choice(files), root / path)
                log.append(ev("attr", path))
        elif op == "swap" and files:  # a file replaced by a directory holding it
            path = rnd.choice(files)
            os.rename(root / path, root / ".tmp")
            log.append(ev("move", path, ".tmp"))
            (root / path).mkdir()
            log.append(ev("rescan", path, is_dir=True))
            moved = _join(path, rnd.choice(NAMES))
            os.rename(root / ".tmp", root / moved)
            log.append(ev("move", ".tmp", moved))


# Derandomized, without an example database: CI runs the same 150 examples every time (a wider
# search is a matter of raising max_examples locally).
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    rnd=st.randoms(use_true_random=False),
    cut=st.integers(0, 30),
    scan=st.sampled_from(("in", "after", "first")),
)
def test_events_read_after_the_fact_with_a_rescan_among_them(
    tmp_path_factory: object, rnd: random.Random, cut: int, scan: str
) -> None:
    base = Path(tmp_path_factory.mktemp("fuzz"))  # type: ignore[attr-defined]
    root = base / "tree"
    root.mkdir()
    for _ in range(rnd.randint(2, 6)):
        _edit(rnd, root, [])
    manifest = Manifest(base / "manifest.db")
    try:
        rec = ChangeRecorder(root, manifest, PathFilter())
        rec.detect_and_apply([ev("rescan", "", is_dir=True)])
        target = StrictTarget(disk_state(root))
        log: list[FsEvent] = []
        _edit(rnd, root, log)
        k = min(cut, len(log))
        rescan = ev("rescan", "", is_dir=True)
        batches = {
            "in": [log[:k] + [rescan] + log[k:]],
            "after": [log[:k] + [rescan], log[k:]],
            "first": [[rescan], log],
        }[scan]
        for batch in batches:
            target.apply(rec.detect_and_apply(batch))
        assert target.problems == []
        assert target.state == disk_state(root)
        assert scan_tree(root, manifest, PathFilter()) == []
    finally:
        manifest.close()
        shutil.rmtree(base)
