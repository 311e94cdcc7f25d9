"""Failures to write a target's state (its manifest.db under the agent's data directory): what
the source is told, instead of a session ended by a raw sqlite3 error.

The served root and the agent's data directory may be different file systems: the files of a
batch can commit while the manifest, the partials' list or the watermark cannot be written. That
is a failure the source retries (a replay of what was committed is harmless), reported as
DISK_FULL when SQLite says the disk is full and IO_ERROR otherwise, naming the manifest's path
so that the operator knows which file system to look at.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relaysync.protocol.messages import ErrorCode
from relaysync.transfer._failures import TransientFailure

logger = logging.getLogger(__name__)


def is_state_io(exc: BaseException) -> bool:
    """Whether `exc` is SQLite failing to read or write its file (full, locked, I/O error,
    corrupt), not a bug in what was asked of it (ProgrammingError, IntegrityError...)."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _disk_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL  # the primary code of an extended one
    return "database or disk is full" in str(exc)


def state_failure(seq: int, db_path: Path, exc: sqlite3.Error) -> TransientFailure:
    """The failure that stops the session at `seq` when the target state `db_path` failed."""
    if _disk_full(exc):
        return TransientFailure(
            seq,
            ErrorCode.DISK_FULL,
            f"target state {db_path}: disk full; free space on that file system",
        )
    return TransientFailure(
        seq,
        ErrorCode.IO_ERROR,
        f"target state {db_path}: {exc}; check that file system and the agent's access to it",
    )


@contextmanager
def state_writes(seq: int, db_path: Path) -> Iterator[None]:
    """Translate SQLite failing on its file, within, to `state_failure` at `seq`.

    Raises:
        TransientFailure: DISK_FULL or IO_ERROR.
    """
    try:
        yield
    except sqlite3.Error as exc:
        if not is_state_io(exc):
            raise
        raise state_failure(seq, db_path, exc) from exc


@contextmanager
def state_cleanup(db_path: Path, what: str) -> Iterator[None]:
    """Log, and go on from, SQLite failing on its file within a clean-up after a failure: the
    failure being reported matters more (the state it could not write is redone on the retry)."""
    try:
        yield
    except sqlite3.Error as exc:
        if not is_state_io(exc):
            raise
        logger.warning("target state %s: %s failed: %s", db_path, what, exc)
