"""Messages and folders the target-side unit tests build alike."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

from relaysync.protocol.messages import AnyMessage, DeltaStart, SmallFile
from relaysync.transfer import ops, staging
from relaysync.transfer.conflicts import NEWEST_MTIME
from relaysync.transfer.signatures import SignatureStore
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.changes import JournalRecord
from relaysync.watch.manifest import Entry, Manifest

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


def delta_messages(tmp_path: Path, old: bytes, new: bytes) -> list[AnyMessage]:
    """The messages of a delta (seq 3) from `old` (held by the target at u/f) to `new`, as a
    link sends them (its source and signatures under tmp_path/src and tmp_path/sigs)."""
    src = tmp_path / "src"
    (src / "u").mkdir(parents=True)
    (src / "u" / "f").write_bytes(old)
    base = xxhash.xxh3_128_digest(old)
    sigs = SignatureStore(tmp_path / "sigs")
    sigs.remember(src, "u/f", base)
    (src / "u" / "f").write_bytes(new)
    record = JournalRecord(
        seq=3,
        op="write",
        path="u/f",
        base_hash=base,
        entry=Entry(path="u/f", kind="f", size=len(new), hash=xxhash.xxh3_128_digest(new)),
    )
    sent = ops.record_messages(src, record, ops.SendOptions(signatures=sigs))
    messages = [m for m in sent if not isinstance(m, ops.Flush)]
    assert isinstance(messages[0], DeltaStart)
    return messages


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
