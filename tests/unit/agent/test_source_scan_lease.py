"""SourceMapping: a scan asks whether a recent file has a writer on the descriptor it hashes from.

Found at stop 36: a first scan of a tree written in the last OPEN_WRITER_HOLD_MAX_S (start-up
right after a bulk write; a new mapping of a fresh tree) asked `probe_lease` of every file after
the scan, opening each a second time: 0.12 CPU-s per 10,000 files, before the batch could be
journaled. The scan now takes the lease on the descriptor it reads the file from (two system
calls), and the hold asks again only of a file it has no answer for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync._util import lease
from relaysync.agent import _hot_files
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.scanner import scan
from relaysync.watch.watcher import FsEvent

HOUR_NS = 3600 * 10**9


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "src" / "d").mkdir(parents=True)
    return tmp_path / "src"


@pytest.fixture
def mapping(root: Path, tmp_path: Path) -> Iterator[SourceMapping]:
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    m = SourceMapping(spec, tmp_path / "state", hot_file_s=0.0, rescan_interval_s=0)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the hold opened again to ask (`probe_lease`)."""
    paths: list[str] = []
    probe = _hot_files.probe_lease

    def counting(root: str | os.PathLike[str], relpath: str) -> lease.LeaseProbe:
        paths.append(relpath)
        return probe(root, relpath)

    monkeypatch.setattr(_hot_files, "probe_lease", counting)
    return paths


def _tree(root: Path, count: int) -> list[str]:
    paths = [f"d/f{i:03}" for i in range(count)]
    for p in paths:
        (root / p).write_bytes(p.encode())
    return paths


def _journaled(mapping: SourceMapping) -> set[str]:
    return {r.path for r in mapping.journal.read(0) if r.op == "write"}


def test_a_scan_tells_which_recent_files_it_read_have_a_writer(root: Path, tmp_path: Path) -> None:
    _tree(root, 3)
    old = root / "d" / "f002"
    os.utime(old, ns=(time.time_ns() - HOUR_NS, time.time_ns() - HOUR_NS))
    manifest = Manifest(tmp_path / "m.db")
    try:
        with open(root / "d" / "f001", "ab") as writer:
            writer.write(b"more")
            writer.flush()
            result = scan(root, manifest, PathFilter(), probe_writers_s=30.0)
            off = scan(root, manifest, PathFilter())
    finally:
        manifest.close()
    ino = {p: os.stat(root / p).st_ino for p in ("d/f000", "d/f001")}
    assert result.writers == {"d/f000": (ino["d/f000"], False), "d/f001": (ino["d/f001"], True)}
    assert off.writers == {}  # a target's scan, or a source's without the window: no lease


@pytest.mark.anyio
async def test_a_fresh_tree_is_not_opened_again_and_its_open_file_is_held(
    root: Path, mapping: SourceMapping, asked: list[str]
) -> None:
    paths = _tree(root, 50)
    with open(root / paths[7], "ab") as writer:  # a writer paused on one of them
        writer.write(b"half")
        writer.flush()
        await mapping._record([FsEvent(kind="rescan", path="", is_dir=True)])
        assert asked == []  # the bug: the 50 paths, each opened a second time
        assert _journaled(mapping) == set(paths) - {paths[7]}
        assert paths[7] in mapping._held
    await mapping._record([FsEvent(kind="write", path=paths[7])])  # its close-write
    assert paths[7] in _journaled(mapping)


def test_an_answer_for_another_inode_is_not_taken(
    root: Path, mapping: SourceMapping, asked: list[str]
) -> None:
    """The scan's answer is for the inode it read (a batch may hold a later look at the path,
    made without a lease: the file replaced meanwhile): of another inode the hold asks anew."""
    [path] = _tree(root, 1)
    changes = mapping.recorder.detect([FsEvent(kind="write", path=path)]).changes
    [change] = [c for c in changes if c.path == path]  # after the mkdir of d
    assert change.entry is not None
    told_closed = {path: (change.entry.ino, False)}
    assert mapping._still_hot([change], set(), {0}, told_closed) == set()
    assert asked == []
    with open(root / path, "ab") as writer:  # open for writing: the stale "closed" is not taken
        other_inode = {path: (change.entry.ino + 1, False)}
        assert mapping._still_hot([change], set(), {0}, other_inode) == {0}
        writer.write(b"x")
    assert asked == [path]


@pytest.mark.anyio
async def test_without_the_compiled_probe_of_an_open_file_the_hold_asks_as_before(
    root: Path, mapping: SourceMapping, asked: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build of the C probe from before `probe_open` (a checkout not rebuilt): nothing told at
    scan time, every recent file asked after it, as before."""

    class OldBuild:
        probe = staticmethod(lease._leaseprobe.probe)

    monkeypatch.setattr(lease, "_leaseprobe", OldBuild)
    paths = _tree(root, 5)
    await mapping._record([FsEvent(kind="rescan", path="", is_dir=True)])
    assert sorted(asked) == paths
    assert _journaled(mapping) == set(paths)
