"""Messages and folders the target-side unit tests build alike."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

from relaysync.protocol.messages import SmallFile
from relaysync.transfer import staging
from relaysync.transfer.conflicts import NEWEST_MTIME
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest

T0 = 1_700_000_000_000_000_000  # an mtime in ns


def small_file(
    seq: int, path: str, data: bytes, mode: int = 0o644, mtime_ns: int = T0
) -> SmallFile:
    """A whole small file as a source sends it, with its true hash."""
    return SmallFile(
        seq=seq,
        path=path,
        size=len(data),
        mode=mode,
        mtime_ns=mtime_ns,
        data=data,
        hash=xxhash.xxh3_128(data).digest(),
    )


def nm_members(tmp_path: Path) -> tuple[TargetFolder, TargetFolder]:
    """Two members of an N:M job sharing a root (tmp_path/root), its lock and its count of tree
    changes, as the agent opens them."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    a = TargetFolder(
        mapping_id=1,
        source_node="A",
        root=root,
        manifest=Manifest(tmp_path / "a.db"),
        durable=False,
        conflict=NEWEST_MTIME,
        lock=threading.RLock(),
    )
    b = TargetFolder(
        mapping_id=2,
        source_node="B",
        root=root,
        manifest=Manifest(tmp_path / "b.db"),
        durable=False,
        conflict=NEWEST_MTIME,
        lock=a.lock,
        tree_changes=a.tree_changes,
    )
    return a, b


_HELD: list[int] = []


def held_dirs() -> Iterator[None]:
    """For a fixture: the descriptors `open_partial` and `open_temp` held are closed after."""
    yield
    while _HELD:
        os.close(_HELD.pop())


def _held(directory: Path) -> int:
    _HELD.append(os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    return _HELD[-1]


def open_partial(
    _root: Path, final: Path, content_hash: bytes, **kwargs: Any
) -> staging.IncomingFile:
    """`IncomingFile.open_partial` of `final` in its directory held open (as the receiver's
    DirHandles holds it) until the test ends."""
    return staging.IncomingFile.open_partial(
        final, content_hash, dir_fd=_held(final.parent), **kwargs
    )


def open_temp(_root: Path, final: Path, **kwargs: Any) -> staging.IncomingFile:
    """`IncomingFile.open` of `final` in its directory held open until the test ends."""
    return staging.IncomingFile.open(final, dir_fd=_held(final.parent), **kwargs)
