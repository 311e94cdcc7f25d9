"""Lock files: one relaysync master or agent process at a time in a data directory.

`lock_file` locks any file for its holder, as the master's SQLite database lock
(master/db_lock.py) does too. The data directory's lock is an exclusive `flock` on `<data>/lock`, taken before anything else in the directory
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


class FileLock:
    """A held file lock (or none, where the file system has no flock); a context manager that
    releases it."""

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

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class LockHeld(Exception):
    """Another open file holds the lock; `record` is what its holder wrote into the file."""

    def __init__(self, record: str) -> None:
        super().__init__(record)
        self.record = record


def lock_file(path: Path, record: str, what: str) -> FileLock:
    """Take an exclusive flock on `path` (made, mode 0600, if absent) and write `record` in it.

    Args:
        path: the lock file.
        record: who holds it, as another process's `LockHeld.record` will read it.
        what: what the lock guards, for messages: `data directory /srv/rs`.

    Returns:
        The held lock (not held where the file system has no flock: a warning says so);
        released by `release()`, or by the kernel when the process ends.

    Raises:
        LockHeld: another open file holds it (the record is at most 1000 bytes).
        ConfigError: the file cannot be made, opened or locked.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # a file in its place, no permission, a read-only file system...
        raise ConfigError(f"{what} cannot be used: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        held = _read_record(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockHeld(held) from exc
        if exc.errno not in _UNSUPPORTED:  # EIO, ENOLCK's cousins on a network file system...
            raise ConfigError(f"{what}: cannot lock {path}: {exc}") from exc
        logger.warning(
            "%s: its file system cannot lock %s (%s); nothing stops a second relaysync "
            "process from using it: run only one there",
            what,
            path,
            exc.strerror,
        )
        return FileLock(path, None)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
    except OSError as exc:  # the record is for the message only: the lock is held anyway
        logger.warning("lock file %s: cannot write its holder (%s)", path, exc.strerror)
    return FileLock(path, fd)


def _read_record(fd: int) -> str:
    try:
        return os.pread(fd, 1000, 0).decode(errors="replace")
    except OSError:
        return ""


def lock_data_dir(data_dir: Path, role: str) -> FileLock:
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
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a file in its place, no permission, a read-only file system...
        raise ConfigError(f"data directory {data_dir} cannot be used: {exc}") from exc
    try:
        return lock_file(
            data_dir / LOCK_FILE, f"{os.getpid()} {role}\n", f"data directory {data_dir}"
        )
    except LockHeld as held:
        raise DataDirInUse(_holder(held.record), data_dir.resolve(), role) from held


def _holder(record: str) -> str:
    """Who holds the lock, as it wrote itself: `relaysync master (pid 24651)`, or `relaysync
    process` when it has not written that yet."""
    fields = record.split()
    pid = fields[0] if fields and fields[0].isdigit() else ""
    role = fields[1] if len(fields) > 1 and fields[1].isalpha() else "process"
    return f"relaysync {role}" + (f" (pid {pid})" if pid else "")
