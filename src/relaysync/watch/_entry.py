"""An entry of a tree as the manifest holds it, and the arithmetic of relative POSIX paths.

What every side compares by: the replicated state of a file, directory or symlink (`Entry`,
`same_version`), the mode and mtime as the manifest and the wire hold them, and a path's
parent, ancestors and subtree bounds. Moved out of watch/manifest.py.
"""

from __future__ import annotations

import os
from typing import Literal

import msgspec


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One file ("f"), directory ("d") or symlink ("l") of a tree.

    `path` is relative and POSIX ("" is the root and is never stored); `mode` holds permission
    bits only (`permission_bits`: no setuid, setgid or sticky); `hash` is the xxh3-128 of the content (files), of the target string (links), or
    b"" (directories). `ino` is the file's inode number on this side (0: unknown, and always
    for directories and links): local bookkeeping that finds a file's other hard links, never
    sent to a peer and no part of the version (`same_version`). `ctime_ns` is the file's
    st_ctime_ns when it was hashed (0: unknown, and always for directories and links), the same
    kind of bookkeeping: a scan hashes a file whose ctime moved although its size, mtime and
    inode did not (an in-place rewrite that kept them: `cp -p`, `rsync --inplace -t`).
    """

    path: str
    kind: Literal["f", "d", "l"]
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    hash: bytes = b""
    link_target: str = ""
    ino: int = 0
    ctime_ns: int = 0


def same_version(a: Entry | None, b: Entry | None) -> bool:
    """Whether two entries describe the same replicated state: all but the local bookkeeping
    (inode number, ctime)."""
    if a is None or b is None:
        return a is b
    return a == b or msgspec.structs.replace(a, ino=b.ino, ctime_ns=b.ctime_ns) == b


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def mtime_ns_of(st: os.stat_result) -> int:
    """st_mtime_ns as the manifest (a signed 64-bit column) and the wire hold it: a date after
    2262-04-11 (or before 1677-09-21), which `touch -d 2300-01-01` makes, is clamped to the
    nearest one they can hold, so one such file neither stops its mapping nor is refused."""
    return min(max(st.st_mtime_ns, _INT64_MIN), _INT64_MAX)


def permission_bits(st_mode: int) -> int:
    """The part of a mode that is replicated: read, write and execute for owner, group, others.

    setuid, setgid and sticky never travel, nor land on a target from the wire: a source (or a
    peer posing as one) must not plant a setuid-root program on every server of the fleet.
    """
    return st_mode & 0o777


def split_path(path: str) -> tuple[str, str]:
    """Return (parent, name) of a relative POSIX path; the parent of "a" is ""."""
    parent, _, name = path.rpartition("/")
    return parent, name


def ancestors(path: str) -> list[str]:
    """Return the directories above `path`, nearest first, ending with the root ""."""
    out = []
    while path:
        path = split_path(path)[0]
        out.append(path)
    return out


def subtree_bounds(path: str) -> tuple[str, str]:
    """Return (low, high) so that `low <= p < high` selects the paths strictly below `path`."""
    prefix = f"{path}/" if path else ""
    # "0" is the character right after "/", so every "path/..." sorts between the bounds.
    return prefix, (f"{path}0" if path else "\U0010ffff")
