"""Turning source-side changes into wire ops: journal records and tree differences to messages.

Runs in worker threads (it reads files). Small files are read whole; a file larger than
CHUNK_BYTES is streamed by `iter_file_messages` so memory stays flat in the file size. A file
that changes while it is read is sent as FileAbort: the newer version has its own journal record.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import xxhash

from relaysync.constants import CHUNK_BYTES
from relaysync.protocol.messages import (
    AnyMessage,
    Delete,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    Rename,
    SetAttr,
    Symlink,
)
from relaysync.watch.changes import JournalRecord
from relaysync.watch.manifest import Entry


def iter_file_messages(root: Path, path: str, seq: int, *, base_hash: bytes = b"") -> Iterator[AnyMessage]:
    """Yield FileStart, FileChunk..., FileEnd (or FileAbort) for the file as it is now on disk.

    Yields nothing if the file is gone or is no longer a regular file (a later record covers it).
    """
    full = root / path
    try:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return
        yield FileStart(seq=seq, path=path, size=before.st_size, mode=stat.S_IMODE(before.st_mode),
                        mtime_ns=before.st_mtime_ns, base_hash=base_hash)
        hasher = xxhash.xxh3_128()
        offset = 0
        while offset < before.st_size:
            data = os.pread(fd, min(CHUNK_BYTES, before.st_size - offset), offset)
            if not data:
                break
            hasher.update(data)
            yield FileChunk(seq=seq, offset=offset, data=data)
            offset += len(data)
        after = os.fstat(fd)
        if offset != before.st_size or (after.st_size, after.st_mtime_ns) != (
            before.st_size, before.st_mtime_ns
        ):
            yield FileAbort(seq=seq, reason="changed while read")
            return
        yield FileEnd(seq=seq, hash=hasher.digest())
    finally:
        os.close(fd)


def record_messages(root: Path, record: JournalRecord) -> Iterator[AnyMessage]:
    """Yield the wire ops for one journal record."""
    entry = record.entry
    match record.op:
        case "write":
            yield from iter_file_messages(root, record.path, record.seq, base_hash=record.base_hash)
        case "delete":
            yield Delete(seq=record.seq, path=record.path)
        case "mkdir":
            yield MakeDir(seq=record.seq, path=record.path, mode=entry.mode if entry else 0o755)
        case "symlink":
            target = entry.link_target if entry else os.readlink(root / record.path)
            yield Symlink(seq=record.seq, path=record.path, target=target)
        case "rename":
            yield Rename(seq=record.seq, path=record.path, new_path=record.new_path,
                         hash=entry.hash if entry and entry.kind == "f" else b"")
        case "attr":
            if entry is not None:
                yield SetAttr(seq=record.seq, path=record.path, mode=entry.mode, mtime_ns=entry.mtime_ns)


def entry_messages(root: Path, entry: Entry) -> Iterator[AnyMessage]:
    """Yield the ops that create `entry` on a target (catch-up work, seq 0)."""
    match entry.kind:
        case "f":
            yield from iter_file_messages(root, entry.path, 0)
        case "d":
            yield MakeDir(seq=0, path=entry.path, mode=entry.mode or 0o755)
        case "l":
            try:  # entries rebuilt from a directory listing carry no link target
                target = entry.link_target or os.readlink(root / entry.path)
            except OSError:
                return  # gone meanwhile: a later record covers it
            yield Symlink(seq=0, path=entry.path, target=target)


def message_bytes(message: AnyMessage) -> int:
    """Approximate payload size, for batching by bytes."""
    return len(message.data) + 64 if isinstance(message, FileChunk) else 64
