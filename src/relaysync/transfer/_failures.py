"""Transient failures of ops on a target: the session stops at one, and the source retries it."""

from __future__ import annotations

import errno

from relaysync.protocol.messages import ErrorCode


class TransientFailure(Exception):
    """An op failed in a way a retry may fix; the session stops at it."""

    def __init__(self, seq: int, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.seq, self.code, self.detail = seq, code, detail


def _transient_os(seq: int, path: str, exc: OSError) -> TransientFailure:
    code = ErrorCode.DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ErrorCode.IO_ERROR
    return TransientFailure(seq, code, f"{path}: {exc.strerror or exc}")
