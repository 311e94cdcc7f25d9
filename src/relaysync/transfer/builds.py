"""Delta builds: one delta being computed from a kept signature to one version of a file, in
parts, signed and hashed once, and shared by every link that sends that version."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

_READ_BYTES = 1024 * 1024


def version_of(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies one version of a file without reading it (ctime catches `touch -r`)."""
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def hash_version(fd: int, st: os.stat_result) -> bytes | None:
    """The content hash (xxh3-128) of the file open on `fd` if it is still the version `st`
    describes, else None."""
    hasher = xxhash.xxh3_128()
    offset = 0
    try:
        while data := os.pread(fd, _READ_BYTES, offset):
            hasher.update(data)
            offset += len(data)
        return hasher.digest() if version_of(os.fstat(fd)) == version_of(st) else None
    except OSError:
        return None


@dataclass
class DeltaPart:
    """The delta of one consecutive part of the new version, written by the block search in a thread."""

    path: Path
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


@dataclass
class DeltaBuild:
    """A delta being computed: one part per core for large files, each a complete
    delta of its range; applied one after the other they rebuild the file. Readers follow each
    part's file as it grows. Beside the parts, the build signs the new version once (for the
    next change's delta) and so learns its content hash, for every link that sends it."""

    key: Path
    stat: os.stat_result  # of the new version when the build started
    parts: list[DeltaPart]
    fd: int  # the new version, open (and closed) by the build: every part reads this inode
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False  # set before `done`: every part complete and the file did not change meanwhile
    new_hash: bytes | None = None  # set before `done`: the new version's content hash
    _pending: int = 0

    def exists(self) -> bool:
        return all(part.path.exists() for part in self.parts)
