"""The exclusive lock on a resumable partial: one session writes a partial at a time.

A link that restarts mid-file starts a successor session while the session before it may
still hold the partial open (its cancellation waits for the batch its thread is applying). Two
writers of one partial would each write their own bytes into it, or the successor, starting
afresh, would put a new file under the name while the old one's file kept its space until it
was closed: on a nearly full disk, two copies of a large file. The lock is `flock` on the
partial's own open file, so it goes the moment its holder closes it (or dies); readers (a relay
sending a child the part below a resume offset) take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time

logger = logging.getLogger(__name__)

# A successor waits this long for the session before it to let go of a partial. That session
# closes its files as it ends, and `PeerServer` waits for it to end before the successor starts:
# this covers one that outlived that wait. Past it the op fails (IO_ERROR) and the source retries.
PARTIAL_BUSY_WAIT_S = 30.0
PARTIAL_POLL_S = 0.05  # how often a waiting successor tries the lock again


def open_locked(dir_fd: int, name: str, flags: int) -> int:
    """Open the partial `name` in the directory `dir_fd` (held open: never through a link swapped
    in for a directory's name) and take its exclusive lock, waiting while another holds it.

    The lock is checked to be on the file the name still leads to: the holder may have removed
    the partial, or started it afresh under the same name, before it let go.

    Raises:
        BlockingIOError: another session still held it after PARTIAL_BUSY_WAIT_S.
        OSError: opening failed (FileNotFoundError without O_CREAT and no partial...).
    """
    deadline = time.monotonic() + PARTIAL_BUSY_WAIT_S
    waited = False
    while True:
        fd = _open(dir_fd, name, flags)
        try:
            held = _try_lock(fd) and _still_named(fd, dir_fd, name)
        except BaseException:
            os.close(fd)
            raise
        if held:
            if waited:
                logger.info("took over partial %s from the session before", name)
            return fd
        os.close(fd)
        if time.monotonic() >= deadline:
            raise BlockingIOError(errno.EWOULDBLOCK, "partial held by another session", name)
        if not waited:
            logger.info("waiting for the session before to let go of partial %s", name)
            waited = True
        time.sleep(PARTIAL_POLL_S)


def lock_fresh(fd: int, name: str) -> int:
    """Lock a partial this session has just created (O_EXCL); `fd`, or closed and an error if a
    writer that opened the new file meanwhile holds it.

    Raises:
        BlockingIOError: another session took the new file's lock first.
    """
    try:
        if _try_lock(fd):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    raise BlockingIOError(errno.EWOULDBLOCK, "partial held by another session", name)


def _open(dir_fd: int, name: str, flags: int) -> int:
    try:
        return os.open(name, flags, 0o600, dir_fd=dir_fd)
    except PermissionError:
        # Left with its file's own mode (read-only) by a kill -9 between a commit's chmod and
        # its rename: ours, so made writable again (an agent that is not root could not resume).
        os.chmod(name, 0o600, dir_fd=dir_fd, follow_symlinks=False)
        return os.open(name, flags, 0o600, dir_fd=dir_fd)


# A file system that cannot lock (some FUSE ones): partials there go unlocked, as before locks,
# rather than never (the whole-file hash still catches two writers' mix: a retry).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        logger.debug("partials go unlocked here: %s", exc)
    return True


def _still_named(fd: int, dir_fd: int, name: str) -> bool:
    try:
        named = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)
