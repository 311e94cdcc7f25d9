"""A link's comparison while source paths are there but cannot be read (a file not readable to
hash, a directory not listable, the source folder itself not listable): the scan leaves out what
it could not see, and the comparison must not take that for gone. Nothing at or below such a path
is erased or deleted on the target (and an unlistable root means no comparison at all).

Over a real socket (plain link, in-process agents' parts). The errno (EACCES) is injected at the
scan's opens (`scanner.open_dir_in`, `_file_hash.open_for_read`): the reviewer's repro got them
for real from a process without CAP_DAC_OVERRIDE (/tmp/rev-src2/erase_repro.py,
erase_root_repro.py).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from tests.component.agent._pair import (
    peer_server,
    plain_link,
    source_mapping,
    target_folder,
)

from relaysync.agent.source import SourceMapping
from relaysync.transfer.sender import TargetLink, _Session
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch import _file_hash, scanner
from relaysync.watch._fsevent import FsEvent
from relaysync.watch.filters import PathFilter
from relaysync.watch.recorder import ChangeRecorder

BOUND_S = 30.0  # every wait below polls for its condition under this bound
SEEDED = ("d/f1", "d/f2", "top.txt", "locked.txt", "other.txt")


class _CountingLink(TargetLink):
    compares = 0

    async def _catch_up_by_compare(self, session: _Session) -> None:
        await super()._catch_up_by_compare(session)
        self.compares += 1


def _lock(monkeypatch: pytest.MonkeyPatch, dirs: set[str], files: set[str]) -> None:
    """The scan's opens of `dirs` (to list) and `files` (to hash) fail with EACCES while named."""
    real_dir, real_file = scanner.open_dir_in, _file_hash.open_for_read

    def open_dir_in(top: Path, reldir: str) -> int:
        if reldir in dirs:
            raise PermissionError(errno.EACCES, "Permission denied", reldir)
        return real_dir(top, reldir)

    def open_for_read(path: str, *, dir_fd: int | None = None) -> int:
        if os.path.basename(path) in files:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_file(path, dir_fd=dir_fd)

    monkeypatch.setattr(scanner, "open_dir_in", open_dir_in)
    monkeypatch.setattr(_file_hash, "open_for_read", open_for_read)
    # the compiled read opens in C, past this seam (tests/integration/test_unreadable_source.py
    # has a real EACCES go through it)
    monkeypatch.setattr(_file_hash, "_smallread", None)


def _seed(tmp_path: Path) -> tuple[SourceMapping, TargetFolder]:
    """The same files on both sides, the target's manifest holding them (a pre-seeded target)."""
    source, folder = source_mapping(tmp_path), target_folder(tmp_path)
    earlier = time.time_ns() - 60 * 10**9  # not held back as hot by the scan
    for base in (source.root, folder.root):
        (base / "d").mkdir()
        for rel in SEEDED:
            (base / rel).write_text(f"same {rel}")
            os.utime(base / rel, ns=(earlier, earlier))
    recorder = ChangeRecorder(folder.root, folder.manifest, PathFilter(), hard_links=False)
    recorder.detect_and_apply([FsEvent(kind="rescan", path="")])
    return source, folder


async def _until(done: Callable[[], bool]) -> None:
    with anyio.fail_after(BOUND_S):
        while not done():
            await anyio.sleep(0.02)


async def _compare_then_write(source: SourceMapping, folder: TargetFolder, after: str) -> None:
    """Run a link until it compared once, then until a file written after it (`after`, in a
    directory that can be listed) arrived: the target applies in order, so what the comparison
    sent is applied by then."""
    async with anyio.create_task_group() as tg:
        port = await tg.start(peer_server(folder).serve)
        link = plain_link(source, port, cls=_CountingLink)
        tg.start_soon(link.serve)
        await _until(lambda: link.compares >= 1)
        (source.root / after).write_text("written after the comparison")
        earlier = time.time_ns() - 10 * 10**9
        os.utime(source.root / after, ns=(earlier, earlier))
        await source._record([FsEvent(kind="write", path=after)])
        await _until(lambda: (folder.root / after).exists())
        tg.cancel_scope.cancel()


def test_a_comparison_keeps_an_unlistable_directory_and_an_unreadable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix, the comparison sent Erase(d, keep=[]) and Erase('', keep=[d, top.txt...]):
    d/f1, d/f2 and locked.txt were deleted on the target while they were still on the source."""
    source, folder = _seed(tmp_path)
    _lock(monkeypatch, dirs={"d"}, files={"locked.txt"})
    try:
        anyio.run(source._record, [FsEvent(kind="rescan", path="")])
        assert "d" in source.unreadable and "locked.txt" in source.unreadable
        assert source.manifest.get("locked.txt") is None  # the scan could not hash it
        assert source.manifest.get("d/f1") is None  # nor list d
        anyio.run(_compare_then_write, source, folder, "after.txt")
    finally:
        source.close()
    for rel in SEEDED:
        assert (folder.root / rel).read_text() == f"same {rel}", rel


def test_an_unlistable_source_folder_means_no_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source folder itself not listable (mode 0300 for a non-root agent): before the fix,
    the comparison erased every name on the target that the manifest did not hold."""
    source, folder = _seed(tmp_path)
    (source.root / "other.txt").unlink()  # the manifest of the source lacks it: its last scan
    try:
        anyio.run(source._record, [FsEvent(kind="rescan", path="")])
        (source.root / "other.txt").write_text("same other.txt")  # back, the root now unlistable
        _lock(monkeypatch, dirs={""}, files=set())
        anyio.run(source._record, [FsEvent(kind="rescan", path="")])
        assert "" in source.unreadable
        anyio.run(_compare_then_write, source, folder, "d/after.txt")
    finally:
        source.close()
    for rel in SEEDED:
        assert (folder.root / rel).read_text() == f"same {rel}", rel
