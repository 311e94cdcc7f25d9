"""The data directory lock: one relaysync master or agent process at a time in a data directory.

The lock is an exclusive `flock` on `<data>/lock`, taken before anything else in the directory
is opened or written and held until the service ends. The kernel drops it when the process dies,
also after kill -9, so a stale lock never stops a restart; the file itself stays (removing it
would let a second process lock a new file while the first still holds the old one). The holder
writes its pid and role into it for the message a second process shows: the lock decides, the
pid only informs.

A file system without flock (some network file systems: ENOLCK, EOPNOTSUPP) does not stop the
service: it runs unprotected, with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from relaysync.errors import ConfigError, DataDirInUse

logger = logging.getLogger(__name__)

LOCK_FILE = "lock"
_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


class DataDirLock:
    """A held data directory lock (or none, where the file system has no flock); a context
    manager that releases it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (closing its descriptor does); the file stays. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_data_dir(data_dir: Path, role: str) -> DataDirLock:
    """Lock `data_dir` (created if absent, mode 0700) for this process, as `role`.

    Args:
        data_dir: the master's or agent's data directory.
        role: "master" or "agent", for the message another process shows.

    Returns:
        The held lock; released by `release()`, or by the kernel when the process ends.

    Raises:
        DataDirInUse: another process holds the lock.
        ConfigError: the directory or its lock file cannot be made or opened.
    """
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # a file in its place, no permission, a read-only file system...
        raise ConfigError(f"data directory {data_dir} cannot be used: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DataDirInUse(holder, data_dir.resolve(), role) from exc
        if exc.errno not in _UNSUPPORTED:  # EIO, ENOLCK's cousins on a network file system...
            raise ConfigError(f"data directory {data_dir}: cannot lock {path}: {exc}") from exc
        logger.warning(
            "data directory %s: its file system cannot lock %s (%s); nothing stops a second "
            "relaysync process from using it: run only one there",
            data_dir,
            path,
            exc.strerror,
        )
        return DataDirLock(path, None)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
    except OSError as exc:  # the pid is for the message only: the lock is held anyway
        logger.warning("data directory lock %s: cannot write the pid (%s)", path, exc.strerror)
    return DataDirLock(path, fd)


def _read_holder(fd: int) -> str:
    """Who holds the lock, as it wrote itself: `relaysync master (pid 24651)`, or `relaysync
    process` when it has not written that yet."""
    try:
        fields = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        fields = []
    pid = fields[0] if fields and fields[0].isdigit() else ""
    role = fields[1] if len(fields) > 1 and fields[1].isalpha() else "process"
    return f"relaysync {role}" + (f" (pid {pid})" if pid else "")
