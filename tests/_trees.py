"""Tree snapshots for comparing a source folder with its targets in tests."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import xxhash

TEMP_PREFIX = ".relaysync."


def snapshot(root: Path, *, with_mtime: bool = True) -> dict[str, tuple[object, ...]]:
    """Map each relative path to (kind, content hash or link target, mode, mtime) — links not followed."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if name.startswith(TEMP_PREFIX):
                result[rel] = ("temp",)
                continue
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("d", mode)
            else:
                digest = xxhash.xxh3_128(full.read_bytes()).hexdigest()
                result[rel] = ("f", digest, mode) + ((st.st_mtime_ns,) if with_mtime else ())
    return result


def temp_files(root: Path) -> list[str]:
    return [p for p, v in snapshot(root).items() if v == ("temp",)]
