"""Wire paths: relative, normalised, checked, and resolved inside a mapped root only.

Every path a peer sends goes through `check_relpath` and `resolve_inside` before anything
touches the disk. Symlinks inside the root are never followed: each existing parent component
of the resolved path must be a real directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from relaysync.constants import MAX_NAME_BYTES, MAX_PATH_BYTES, TEMP_PREFIX
from relaysync.errors import UnsafePath


def check_relpath(path: str, *, allow_root: bool = False) -> str:
    """Return `path` if it is a safe relative POSIX path, else raise UnsafePath.

    Args:
        path: the path as received.
        allow_root: accept "" (the mapped root itself).

    Raises:
        UnsafePath: absolute, `..` or `.` components, empty components, NUL, backslash-free
            but over-long names, or the reserved temp prefix.
    """
    if path == "":
        if allow_root:
            return path
        raise UnsafePath(path, "empty path")
    if "\x00" in path:
        raise UnsafePath(path, "contains NUL")
    if path.startswith("/"):
        raise UnsafePath(path, "absolute path")
    ascii = path.isascii()  # one byte a character: no encoding needed to count them
    if (len(path) if ascii else len(path.encode("utf-8", "surrogateescape"))) > MAX_PATH_BYTES:
        raise UnsafePath(path, "path too long")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePath(path, f"component {part!r} not allowed")
        if (len(part) if ascii else len(part.encode("utf-8", "surrogateescape"))) > MAX_NAME_BYTES:
            raise UnsafePath(path, "name too long")
        if part.startswith(TEMP_PREFIX):
            raise UnsafePath(path, "reserved temporary-file prefix")
    return path


def resolve_inside(root: Path, path: str, *, allow_root: bool = False) -> Path:
    """Return root/path after checking that no existing parent is a symlink or a non-directory.

    The final component may be anything (a link is replaced, not followed).

    Raises:
        UnsafePath: the path is unsafe or a parent escapes the root through a symlink.
    """
    check_relpath(path, allow_root=allow_root)
    if path == "":
        return root
    parts = path.split("/")
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break  # the rest does not exist yet; the receiver creates real directories
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(path, f"parent {current.relative_to(root)} is a symlink")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(path, f"parent {current.relative_to(root)} is not a directory")
    return root / path


def parent_of(path: str) -> str:
    """Return the relative parent of `path` ("" for a top-level name)."""
    return path.rpartition("/")[0]


class SafeResolver:
    """`resolve_inside` for one root, remembering directories already proven real.

    A receiver applying thousands of files into the same folders checks each parent once.
    Any op that can turn a directory into something else (delete, rename, erase, symlink)
    must call `forget()` first.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_name = str(root)
        self._dirs: set[str] = {""}

    def forget(self) -> None:
        self._dirs = {""}

    def resolve(self, path: str) -> tuple[str, bool]:
        """Return (root/path as a string, whether its parent directory is known to exist).

        Raises:
            UnsafePath: as resolve_inside.
        """
        check_relpath(path)
        parent = parent_of(path)
        if parent in self._dirs:
            return f"{self._root_name}/{path}", True
        full = resolve_inside(self.root, path)
        if os.path.isdir(full.parent) and not os.path.islink(full.parent):
            while parent not in self._dirs:  # resolve_inside proved every ancestor a real dir
                self._dirs.add(parent)
                parent = parent_of(parent)
            return str(full), True
        return str(full), False
