"""Publishing a file the way systemd and atomic-write libraries do: O_TMPFILE, then linkat(2)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest


def publish(directory: Path, name: str | None, data: bytes) -> None:
    """Write `data` to an O_TMPFILE file in `directory` and, unless `name` is None, link it
    there under `name` before closing it (linkat through /proc/self/fd: no capability)."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            pytest.skip(f"no O_TMPFILE here: {exc}")
        raise
    try:
        os.write(fd, data)
        if name is not None:
            # a dir_fd makes CPython call linkat(AT_SYMLINK_FOLLOW), not link(2)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            finally:
                os.close(dir_fd)
    finally:
        os.close(fd)
