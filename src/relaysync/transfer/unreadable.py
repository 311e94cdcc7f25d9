"""Files a link could not read on the source, kept and read again with backoff until they go.

A file that is there but cannot be read (EACCES after a chmod, EMFILE, EIO: SourceReadError) is
not gone: skipping it as if it were would leave the target without it, silently, until some
later change. Stopping the link at it would hold back every other file on the link for as long
as it stays unreadable. So the link ends that file with a FileAbort naming it (the target records
a failed attempt for the job log), goes on with the rest, and keeps the file here: it is read
again once due (UNREADABLE_RETRY_MIN_S, doubling to UNREADABLE_RETRY_MAX_S), with the seq it was
journaled under, until it is sent, is gone, or a later send of the same path supersedes it.

Kept per link, across its sessions (the target's watermark passed the record). An agent restart
forgets it: the comparison each new session makes finds the file then.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from relaysync.constants import UNREADABLE_RETRY_MAX_S, UNREADABLE_RETRY_MIN_S
from relaysync.errors import SourceReadError
from relaysync.protocol.messages import Checkpoint, FileAbort
from relaysync.transfer import ops
from relaysync.watch.changes import JournalRecord

Log = logging.Logger | logging.LoggerAdapter[Any]
WARN_FILES = 20  # unreadable files named one by one per cycle of reads; the others are counted


def _noting(messages: Iterator[ops.Outgoing], went: list[bool]) -> Iterator[ops.Outgoing]:
    """`messages`, setting went[0] once one went."""
    for message in messages:
        went[0] = True
        yield message


class _Source(Protocol):
    root: Path


class _Upto(Protocol):
    sent_upto: int


@dataclass
class UnreadableFile:
    """A file to read again: the seq it was to go with, and when."""

    path: str
    seq: int
    expected_hash: bytes
    changed_at: float
    attempts: int = 0
    due: float = 0.0  # on the link's clock
    code: int | None = None  # the errno of the last failure (reported once until it changes)


class UnreadableFiles:
    """The files one link found unreadable (see the module doc). Used by one task at a time."""

    def __init__(self, clock: Callable[[], float], log: Log, options: ops.SendOptions) -> None:
        self._files: dict[str, UnreadableFile] = {}
        self._clock = clock
        self._log = log
        self._options = options  # the link's
        self._warned = 0  # failures reported in this cycle (`flush_warnings`)

    def read_record(
        self, record: JournalRecord, path: str, messages: Iterator[ops.Outgoing]
    ) -> Generator[ops.Outgoing, None, bool | None]:
        """`read` of the file a journal record writes (at `path`: a rename's is its new one)."""
        expected_hash = record.entry.hash if record.entry is not None else b""
        return self.read(record.seq, path, (expected_hash, record.time_ns / 1e9), messages)

    def read(
        self, seq: int, path: str, about: tuple[bytes, float], messages: Iterator[ops.Outgoing]
    ) -> Generator[ops.Outgoing, None, bool | None]:
        """Yield a file's `messages`; return True if the file went whole, False if not (gone,
        or changed while read: a later record covers it), None if it is there but could not be
        read: it is kept, to be read again once due (`retries`). `about`: the version's hash as
        journaled and when it changed (0: unknown).

        A failure is reported once until its state changes (a new seq, another errno): then a
        warning (at most WARN_FILES per cycle, see `flush_warnings`) and a FileAbort naming it
        (the target records the failed attempt). A retry that fails the same way again sends a
        FileAbort only to end what went of the file, so a million unreadable files do not make a
        million job-log records a minute."""
        went = [False]
        try:
            sent = yield from ops.whole_sent(_noting(messages, went))
        except SourceReadError as err:
            known = self._files.get(path)
            new = known is None or known.code != err.code or known.seq < seq
            wait_s = self.failed(path, seq, *about, code=err.code)
            if new:
                self._warn(path, err, wait_s)
            if new or went[0]:
                yield FileAbort(seq=seq, reason=str(err)[:500], path=path)
            return None
        self.sent(path)
        return sent

    def _warn(self, path: str, err: SourceReadError, wait_s: float) -> None:
        self._warned += 1
        if self._warned > WARN_FILES:
            return
        self._log.warning(
            "cannot read %s on the source (%s), will retry in %.0f s: %s",
            path,
            errno.errorcode.get(err.code or 0, err.code),
            wait_s,
            err,
        )

    def flush_warnings(self) -> None:
        """End a cycle of reads (a batch of records, a round of retries): one line counts the
        failures past the first WARN_FILES, not named one by one."""
        if self._warned > WARN_FILES:
            self._log.warning(
                "cannot read %s more files on the source, will retry them",
                self._warned - WARN_FILES,
            )
        self._warned = 0

    def retries(self, source: _Source, session: _Upto) -> Iterator[ops.Outgoing]:
        """The files due again (`due` of the session's sent_upto), each under the seq it was to
        go with (its commit resolves the failed attempts in the job log), between a Checkpoint
        of sent_upto marked `again` (a relay tells them from a replay by it) and one unmarked.
        Each goes whole: the target's copy may be any older version by now."""
        root, upto = source.root, session.sent_upto
        yield Checkpoint(seq=upto, again=True)
        for kept in self.due(upto):
            messages = ops.iter_file_messages(
                root,
                kept.path,
                kept.seq,
                expected_hash=kept.expected_hash,
                options=self._options,
                changed_at=kept.changed_at,
            )
            yield from self.read(
                kept.seq, kept.path, (kept.expected_hash, kept.changed_at), messages
            )
        self.flush_warnings()
        yield Checkpoint(seq=upto)

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def failed(
        self, path: str, seq: int, expected_hash: bytes, changed_at: float, code: int | None = None
    ) -> float:
        """`path` could not be read for `seq` (errno `code`): keep it (a newer seq of it replaces
        an older); returns the wait before it is read again."""
        known = self._files.get(path)
        attempts = known.attempts + 1 if known is not None else 1
        if known is not None and known.seq > seq:  # a retry of an older seq: keep the newer
            seq, expected_hash, changed_at = known.seq, known.expected_hash, known.changed_at
        wait_s = min(UNREADABLE_RETRY_MIN_S * 2 ** (attempts - 1), UNREADABLE_RETRY_MAX_S)
        self._files[path] = UnreadableFile(
            path, seq, expected_hash, changed_at, attempts, self._clock() + wait_s, code
        )
        return wait_s

    def sent(self, path: str) -> None:
        """`path` was sent (or found gone, or deleted): nothing of it to read again."""
        self._files.pop(path, None)

    def forget(self, path: str) -> None:
        """A delete of `path`: nothing at or below it is read again."""
        for p in self._at_or_below(path):
            del self._files[p]

    def moved(self, path: str, new_path: str, seq: int) -> None:
        """A rename (journaled as `seq`) of `path` to `new_path`: what was kept at or below it is
        read again at its new name, under `seq` (the target's copy there, which the rename
        carries, is the old version); what was kept at or below `new_path` was replaced."""
        moving = [self._files.pop(p) for p in self._at_or_below(path)]
        self.forget(new_path)
        for kept in moving:
            kept.path = new_path + kept.path[len(path) :]
            kept.seq = max(kept.seq, seq)
            self._files[kept.path] = kept

    def _at_or_below(self, path: str) -> list[str]:
        prefix = path + "/"
        return [p for p in self._files if p == path or p.startswith(prefix)] if self._files else []

    def due(self, upto: int) -> list[UnreadableFile]:
        """The files due to be read again now, oldest seq first, of those journaled at or below
        `upto` (the session's sent_upto): one of a seq not sent yet in this session is read by
        the session's replay, in order; sent alone first, it would carry the target's watermark
        past the records before it."""
        now = self._clock()
        return sorted((f for f in self._kept(upto) if f.due <= now), key=lambda f: f.seq)

    def next_due(self, upto: int) -> float | None:
        """When the next file `due(upto)` names is due (the link's clock), None if none is kept."""
        return min((f.due for f in self._kept(upto)), default=None)

    def _kept(self, upto: int) -> list[UnreadableFile]:
        return [f for f in self._files.values() if f.seq <= upto]
