"""File-system helpers: opening a source file for reading without following or blocking."""

from __future__ import annotations

import os
import stat

# O_NOFOLLOW: a path replaced by a symlink (out of the root, to /dev/zero) is not followed.
# O_NONBLOCK: opening a FIFO does not wait for a writer (it has no effect on regular files).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result] | None:
    """Open `path` for reading if it is a regular file, with the stat of what was opened.

    The final component is not followed and a FIFO does not block, so whatever is at `path`
    now, the caller reads only the regular file it opened: pass the fd on, never the path.

    Returns:
        (fd, its fstat), the caller closes fd; None if `path` is gone or is not a regular file.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    return _if_regular(fd)


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_regular_in(
    root: str | os.PathLike[str], relpath: str
) -> tuple[int, os.stat_result] | None:
    """`open_regular` of `relpath` below `root`, no component of it followed if it is a symlink.

    A directory replaced by a symlink (to outside the folder) between a write's journaling and
    its send must not be read through: each directory is opened relative to the one above it
    (O_PATH, O_NOFOLLOW), then the file. `root` itself is the operator's and may be a link.

    Returns:
        (fd, its fstat), the caller closes fd; None if the file is gone, is not a regular file,
        or a directory on its way is not a real directory.
    """
    head, _, name = relpath.rpartition("/")
    try:
        parent = _open_dir_in(root, head)
    except OSError:
        return None
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    return _if_regular(fd)


def rmdir_in(root: str | os.PathLike[str], relpath: str) -> None:
    """Remove the empty directory `relpath` below `root`, no component of it followed if it is
    a symlink (one swapped in after a check cannot lead the removal out of the folder).

    Raises:
        OSError: not empty, gone, not a directory, or a directory on its way is not real.
    """
    head, _, name = relpath.rpartition("/")
    parent = _open_dir_in(root, head)
    try:
        os.rmdir(name, dir_fd=parent)
    finally:
        os.close(parent)


def _open_dir_in(root: str | os.PathLike[str], reldir: str) -> int:
    """An O_PATH descriptor of `reldir` below `root` ("" is root), each directory opened
    relative to the one above it, none followed if it is a symlink (`root` itself may be).

    Raises:
        OSError: a directory on the way is gone or is not a real directory.
    """
    parent = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        for part in reldir.split("/") if reldir else ():
            child = os.open(part, _DIR_FLAGS, dir_fd=parent)
            os.close(parent)
            parent = child
    except BaseException:
        os.close(parent)
        raise
    return parent


def _if_regular(fd: int) -> tuple[int, os.stat_result] | None:
    """(fd, its fstat) if `fd` is a regular file; else it is closed and None is returned."""
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st
