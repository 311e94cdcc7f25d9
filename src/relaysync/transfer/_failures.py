"""Failures of ops on a target: a transient one stops the session and the source retries it; a
permanent one (the same op fails the same way at every retry) is refused and recorded."""

from __future__ import annotations

import errno
from pathlib import Path

from relaysync.protocol.messages import ErrorCode


class TransientFailure(Exception):
    """An op failed in a way a retry may fix; the session stops at it."""

    def __init__(self, seq: int, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.seq, self.code, self.detail = seq, code, detail


def _transient_os(seq: int, path: str, exc: OSError) -> TransientFailure:
    code = ErrorCode.DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ErrorCode.IO_ERROR
    return TransientFailure(seq, code, f"{path}: {exc.strerror or exc}")


def spool_failure(seq: int, directory: Path, exc: OSError) -> TransientFailure:
    """The failure that stops a relay's session when its spool in `directory` cannot be written."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransientFailure(
            seq,
            ErrorCode.DISK_FULL,
            f"relay spool {directory}: disk full; free space on that file system",
        )
    return TransientFailure(
        seq,
        ErrorCode.IO_ERROR,
        f"relay spool {directory}: {exc.strerror or exc}; check that file system and the "
        "agent's access to it",
    )


def _short(path: str) -> str:
    return path if len(path) <= 120 else f"{path[:60]}...{path[-40:]} ({len(path)} characters)"


# What the file system answers the same way at every retry: retried, one such op would block
# every later change of the mapping for ever.
_PERMANENT = {
    errno.ENAMETOOLONG: "path too long for this target: below its root the path exceeds the file"
    " system's limit (PATH_MAX or NAME_MAX); shorten it at the source or give the target a"
    " shorter root",
    errno.ELOOP: "a directory on its way is a symbolic link on this target, which never writes"
    " through one; replace it by a real directory",
    errno.EINVAL: "this target's file system does not take this name (EINVAL); rename it at the"
    " source",
    errno.EILSEQ: "this target's file system does not take this name's encoding (EILSEQ); rename"
    " it at the source",
}


def permanent_detail(path: str, exc: OSError) -> str | None:
    """What to record for an op whose OSError no retry fixes; None if a retry may."""
    why = _PERMANENT.get(exc.errno or 0)
    return None if why is None else f"{_short(path)}: {why}"
