"""Wire paths: relative, normalised, checked, and resolved inside a mapped root only.

Every path a peer sends goes through `check_relpath` before anything touches the disk. Symlinks
inside the root are never followed: files are written relative to a descriptor of their
directory opened with no component followed (`DirHandles`); other ops check that each existing
parent component is a real directory (`resolve_inside`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from relaysync._util.fs import make_dirs_at, open_dir_at
from relaysync.constants import MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_PATH_DEPTH, TEMP_PREFIX
from relaysync.errors import UnsafePath


def check_relpath(path: str, *, allow_root: bool = False, max_depth: int = MAX_PATH_DEPTH) -> str:
    """Return `path` if it is a safe relative POSIX path, else raise UnsafePath.

    Args:
        path: the path as received.
        allow_root: accept "" (the mapped root itself).
        max_depth: components at most (MAX_PATH_DEPTH: no op makes a tree deeper).

    Raises:
        UnsafePath: absolute, `..` or `.` components, empty components, NUL, backslash-free
            but over-long names, more than `max_depth` components, or the reserved temp prefix.
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
    parts = path.split("/")
    if len(parts) > max_depth:
        raise UnsafePath(path[:200], f"more than {max_depth} components")
    for part in parts:
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


def _moved(reldir: str) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT, "directory renamed or removed since a file was staged in it", reldir or "."
    )


class TreeChanges:
    """A count of the ops that may have turned a directory below one root into something else
    (delete, rename, erase, symlink): shared by the sessions writing there (the members of an
    N:M job), so that one member's op makes every member's `DirHandles` open its directories
    anew."""

    def __init__(self) -> None:
        self.count = 0

    def forget(self) -> None:
        self.count += 1


# A directory on the way is a symlink (ELOOP), not a directory (ENOTDIR), or out of root (EXDEV).
_NOT_PLAIN = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EXDEV})


class DirHandles:
    """Descriptors of the directories below one root that a batch of files is written into.

    Each is opened with no component followed (`_util.fs.open_dir_at`, one openat2), and a
    file is created (O_EXCL) and renamed into place relative to it: whatever a local user swaps
    in for a directory's name meanwhile, the write lands in that real directory, never through a
    link. A descriptor proves a directory for one batch only: `forget` (at the end of a batch,
    or after an op that may change the tree) makes the next use open it anew; the descriptors
    that staged files still use stay open until `close_retired` or `release`, when nothing is
    staged any more. Within a batch each directory is opened once (not at each commit of 256
    files): the 10k-file first sync opens each of its 100 directories once a batch.

    Resource handling: at most one descriptor per directory of a batch, and the root's.
    """

    def __init__(self, root: Path, changes: TreeChanges, *, dir_mode: int = 0o755) -> None:
        self.root = root
        self._dir_mode = dir_mode  # of the directories `get(create=True)` makes
        self._changes = changes
        self._seen = changes.count
        self._root_fd = -1
        self._fds: dict[str, int] = {}
        self._retired: list[int] = []
        self._dir_of: dict[int, str] = {}  # each open descriptor's directory (retired included)

    def get(self, reldir: str, *, create: bool = False) -> int:
        """The descriptor of `reldir` ("" is root), its missing directories created if `create`.

        Raises:
            UnsafePath: a directory on its way is a symlink or not a directory.
            FileNotFoundError: it is missing (and not `create`).
            OSError: it could not be opened or created.
        """
        if self._seen != self._changes.count:
            self.forget()
        fd = self._fds.get(reldir)
        return fd if fd is not None else self._open(reldir, create)[0]

    def make(self, reldir: str) -> tuple[int, str | None]:
        """`get(reldir, create=True)`, and the topmost directory it created (relative to root;
        None if it made none): a partial's directories go with it (`TargetFolder.add_partial`).

        Raises:
            as `get`.
        """
        if self._seen != self._changes.count:
            self.forget()
        fd = self._fds.get(reldir)
        return (fd, None) if fd is not None else self._open(reldir, True)

    def _open(self, reldir: str, create: bool) -> tuple[int, str | None]:
        if self._root_fd < 0:  # the root itself is followed: the operator's own link
            self._root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd, made = (
                make_dirs_at(self._root_fd, reldir, self._dir_mode)
                if create
                else (open_dir_at(self._root_fd, reldir), None)
            )
        except OSError as exc:
            if exc.errno in _NOT_PLAIN:
                raise UnsafePath(
                    reldir, "a directory on its way is a symlink or not a directory"
                ) from exc
            raise
        self._fds[reldir] = fd
        self._dir_of[fd] = reldir
        return fd, made

    def check_still_there(self, fd: int) -> None:
        """Raise FileNotFoundError unless the directory `fd` (one of ours) is still the one at
        its path: a file staged in it must not be renamed into a directory another member of an
        N:M job or a local user renamed or removed meanwhile (it would appear elsewhere, or
        nowhere, while the manifest records it at its path). One openat2 and two fstats.
        """
        reldir = self._dir_of.get(fd)
        if reldir is None:
            return  # not one of ours (a caller's own descriptor)
        held = os.fstat(fd)
        try:
            now_fd = open_dir_at(self._root_fd, reldir)
        except OSError as exc:
            raise _moved(reldir) from exc
        try:
            now = os.fstat(now_fd)
        finally:
            os.close(now_fd)
        if held.st_nlink == 0 or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise _moved(reldir)

    def forget(self) -> None:
        """Open each directory anew at its next use (a descriptor in use stays open)."""
        self._seen = self._changes.count
        self._retired.extend(self._fds.values())
        self._fds.clear()

    def close_retired(self) -> None:
        """Close the descriptors `forget` set aside: no staged file uses one any more."""
        retired, self._retired = self._retired, []
        for fd in retired:
            self._dir_of.pop(fd, None)
            os.close(fd)

    def release(self) -> None:
        """Close every descriptor: nothing staged uses one any more."""
        self.forget()
        if self._root_fd >= 0:
            self._retired.append(self._root_fd)
            self._root_fd = -1
        self.close_retired()
