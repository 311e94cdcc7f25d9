"""Files a link could not read on the source, kept and read again with backoff until they go.

A file that is there but cannot be read (EACCES after a chmod, EMFILE, EIO: SourceReadError) is
not gone: skipping it as if it were would leave the target without it, silently, until some
later change. Stopping the link at it would hold back every other file on the link for as long
as it stays unreadable. So the link ends that file with a FileAbort naming it (the target records
a failed attempt for the job log), goes on with the rest, and keeps the file here: it is read
again once due (UNREADABLE_RETRY_MIN_S, doubling to UNREADABLE_RETRY_MAX_S), with the seq it was
journaled under, until it is sent, is gone, or a later send of the same path supersedes it.

A file read whole that is not the version its record journaled (caught half rewritten: a
consistent snapshot of a truncated file; changed while read; or a newer file put at its path) is
not sent as that record's version either: committed, it could stay for good, since a rewrite that
ends as the journaled version is journaled as an `attr` change only, and a later rename would
carry it to the new name. It ends in a FileAbort and is kept the same way, "unsettled", read
again under its seq until a read gives the journaled version or a later send of the path takes
over; after UNSETTLED_READS reads it goes as it is, with a warning.

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

from relaysync.constants import UNREADABLE_RETRY_MAX_S, UNREADABLE_RETRY_MIN_S, UNSETTLED_READS
from relaysync.errors import SourceReadError
from relaysync.protocol.messages import Checkpoint, FileAbort, FileEnd, SmallFile
from relaysync.transfer import ops
from relaysync.transfer.moves import MovedAway
from relaysync.watch.changes import JournalRecord

Log = logging.Logger | logging.LoggerAdapter[Any]
WARN_FILES = 20  # unreadable files named one by one per cycle of reads; the others are counted


def _noting(messages: Iterator[ops.Outgoing], went: list[bool]) -> Iterator[ops.Outgoing]:
    """`messages`, setting went[0] once one went."""
    for message in messages:
        went[0] = True
        yield message


@dataclass
class _Outcome:
    """How a file's messages ended: whole (FileEnd, SmallFile), aborted (FileAbort), or neither
    (nothing went: gone, or not a regular file any more)."""

    whole: bool = False
    aborted: bool = False


def _settled(
    messages: Iterator[ops.Outgoing], expected_hash: bytes, outcome: _Outcome
) -> Iterator[ops.Outgoing]:
    """`messages`, noting in `outcome` how they end. A file read whole whose hash is not
    `expected_hash` (if set) ends in a FileAbort instead of its FileEnd (a SmallFile does not go
    at all, nor anything instead: a FileAbort of seq 0 would reset a relay's spool): the target
    keeps the version it has."""
    for message in messages:
        if isinstance(message, FileEnd | SmallFile):
            if expected_hash and message.hash != expected_hash:
                outcome.whole, outcome.aborted = False, True
                if isinstance(message, FileEnd):
                    yield FileAbort(seq=message.seq, reason="not the version journaled")
                continue
            outcome.whole, outcome.aborted = True, False
        elif isinstance(message, FileAbort):
            outcome.whole, outcome.aborted = False, True
        yield message


class _Source(Protocol):
    root: Path


class _Upto(Protocol):
    sent_upto: int
    moved: MovedAway


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
    unsettled: bool = False  # read, but not the version journaled (see the module doc)


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
        self,
        seq: int,
        path: str,
        about: tuple[bytes, float],
        messages: Iterator[ops.Outgoing],
    ) -> Generator[ops.Outgoing, None, bool | None]:
        """Yield a file's `messages`; return True if the file went whole, False if not (gone:
        a later record covers it), None if it is there but did not go: it could not be read, or
        it is not the version journaled (`unsettled`; once read so UNSETTLED_READS times, any
        version goes), and it is kept, to be read again once due (`retries`). `about`: the
        version's hash as journaled (empty: unknown, any version goes) and when it changed (0:
        unknown).

        A failure is reported once until its state changes (a new seq, another errno): then a
        warning (at most WARN_FILES per cycle, see `flush_warnings`) and a FileAbort naming it
        (the target records the failed attempt). A retry that fails the same way again sends a
        FileAbort only to end what went of the file, so a million unreadable files do not make a
        million job-log records a minute."""
        went, outcome = [False], _Outcome()
        as_is = self._settling_over(path)
        try:
            yield from _settled(_noting(messages, went), b"" if as_is else about[0], outcome)
        except SourceReadError as err:
            known = self._files.get(path)
            new = known is None or known.code != err.code or known.seq < seq
            wait_s = self.failed(path, seq, *about, code=err.code)
            if new:
                self._warn(path, err, wait_s)
            if new or went[0]:
                yield FileAbort(seq=seq, reason=str(err)[:500], path=path)
            return None
        if outcome.aborted:
            self._unsettled(path, seq, about)
            return None
        if as_is and outcome.whole:
            self._log.warning(
                "%s was not the version journaled at %s reads on the source: sent as it is",
                path,
                UNSETTLED_READS,
            )
        self.sent(path)
        return outcome.whole

    def _settling_over(self, path: str) -> bool:
        """Whether `path` was read UNSETTLED_READS times as another version than journaled: a
        file written all the time (a busy log) must go some time, not only once it pauses."""
        kept = self._files.get(path)
        return kept is not None and kept.unsettled and kept.attempts >= UNSETTLED_READS

    def _unsettled(self, path: str, seq: int, about: tuple[bytes, float]) -> None:
        """`path` was read for `seq` but is not the version journaled: keep it to read again (a
        newer seq of it replaces an older; the count of reads goes on), or give it up once read
        UNSETTLED_READS times and once more as it is (it changed while read then too)."""
        known = self._files.get(path)
        attempts = known.attempts + 1 if known is not None and known.unsettled else 1
        if attempts > UNSETTLED_READS:
            self._files.pop(path, None)
            self._log.error(
                "%s changed at each of %s reads on the source: gave up, a later change or"
                " comparison sends it",
                path,
                attempts,
            )
            return
        expected_hash, changed_at = about
        if known is not None and known.seq > seq:  # a read for an older seq: keep the newer
            seq, expected_hash, changed_at = known.seq, known.expected_hash, known.changed_at
        wait_s = min(UNREADABLE_RETRY_MIN_S * 2 ** (attempts - 1), UNREADABLE_RETRY_MAX_S)
        self._files[path] = UnreadableFile(
            path, seq, expected_hash, changed_at, attempts, self._clock() + wait_s, None, True
        )
        self._log.debug(
            "%s is not the version journaled on the source (seq %s), read again in %.0f s",
            path,
            seq,
            wait_s,
        )

    def defer(self, path: str, expected_hash: bytes) -> bool:
        """Whether a comparison leaves `path` (the version `expected_hash`) to its retry rather
        than send it as catch-up work (seq 0): it is kept under a record's seq for that version,
        and only a commit of that seq resolves the record's failed attempts in the job log. The
        retry is made due at once (the comparison found the target lacks the version)."""
        kept = self._files.get(path)
        if kept is None or kept.seq == 0 or kept.expected_hash not in (b"", expected_hash):
            return False
        kept.due = min(kept.due, self._clock())
        return True

    def unsettled(self, path: str) -> bool:
        """Whether `path` is kept because it was not the version journaled when read."""
        kept = self._files.get(path)
        return kept is not None and kept.unsettled

    def note(self, moved: MovedAway, root: Path, path: str, sent: bool | None) -> None:
        """Note in `moved` (the session's) how a send of `path` ended (`read`'s result): gone
        (a later rename of it sends it from its new place), a version that did not go (so does
        a later rename: the target's copy is not the version renamed), or sent."""
        if sent is False:
            moved.gone(root, path)
        elif sent:
            moved.forget(path)
        elif self.unsettled(path):
            moved.unsent(path)

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
            yield from self._retry(root, kept, session.moved)
        self.flush_warnings()
        yield Checkpoint(seq=upto)

    def _retry(self, root: Path, kept: UnreadableFile, moved: MovedAway) -> Iterator[ops.Outgoing]:
        """Read `kept` again; one found gone is noted in `moved` as a write would note it, so the
        rename that took it away sends it from its new place (not the target's older copy)."""
        messages = ops.iter_file_messages(
            root,
            kept.path,
            kept.seq,
            expected_hash=kept.expected_hash,
            options=self._options,
            changed_at=kept.changed_at,
        )
        about = (kept.expected_hash, kept.changed_at)
        sent = yield from self.read(kept.seq, kept.path, about, messages)
        self.note(moved, root, kept.path, sent)

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def kept(self, path: str) -> UnreadableFile | None:
        """What is kept of `path` to read again (its seq: 0 if a comparison found it), if any."""
        return self._files.get(path)

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
