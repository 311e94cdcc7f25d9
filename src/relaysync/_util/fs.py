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
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st
