"""The source's unreadable paths down a relay tree: told on each link, kept by each relay.

A source's comparison keeps on its targets the names of the files and directories it finds there
but cannot read now (transfer/compare.py `Unreadable`). A relay compares its children against its
own tree, which lacks what the source could not read when the relay was synced, so it must know
those names too, or its comparison erases them on a child. Each link tells its target the set
(`SourceUnreadable`, to a peer that announced CAP_UNREADABLE) and a relay keeps the last one per
mapping, on disk, so that its comparisons after a restart keep them before its parent tells it
again; its own links tell its children what it keeps.

A set that shrinks (a path readable again) is told only once the target has been sent every
record journaled before it shrank (`UnreadableTeller`; the head at the moment the shrink was
seen, not the moving one): the record that brings the path is what lets a relay's comparison
stop keeping it. Until then what is new in the set is told as an addition, never as a
replacement. A set over the message's bounds goes cut, marked incomplete (so does a relay's
kept set that additions grow past them): a relay that keeps an incomplete set erases nothing in
its comparisons, and says so. A relay whose parent never tells (an older release) keeps
nothing, as relays did before.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from relaysync.protocol.messages import (
    MAX_UNREADABLE_BYTES,
    MAX_UNREADABLE_PATHS,
    SourceUnreadable,
)
from relaysync.transfer.compare import NOTHING_UNREADABLE, Unreadable
from relaysync.transfer.staging import fsync_dir

logger = logging.getLogger(__name__)

STATE_FILE = "unreadable.json"  # in the relay's spool directory of the mapping


def to_wire(unreadable: Unreadable, *, replace: bool) -> SourceUnreadable:
    """The set as a message: directories first (each keeps a whole subtree), cut to the bounds."""
    kept: dict[str, list[str]] = {"dirs": [], "files": []}
    count = size = 0
    complete = unreadable.complete
    for kind, paths in (("dirs", unreadable.dirs), ("files", unreadable.files)):
        for path in sorted(paths):
            cost = len(path.encode("utf-8", "surrogateescape"))
            if count == MAX_UNREADABLE_PATHS or size + cost > MAX_UNREADABLE_BYTES:
                complete = False
                break
            kept[kind].append(path)
            count, size = count + 1, size + cost
    return SourceUnreadable(
        files=tuple(kept["files"]), dirs=tuple(kept["dirs"]), complete=complete, replace=replace
    )


def from_wire(message: SourceUnreadable) -> Unreadable:
    return Unreadable(
        files=frozenset(message.files), dirs=frozenset(message.dirs), complete=message.complete
    )


def union(a: Unreadable, b: Unreadable) -> Unreadable:
    return Unreadable(
        files=a.files | b.files, dirs=a.dirs | b.dirs, complete=a.complete and b.complete
    )


def covers(kept: Unreadable, other: Unreadable) -> bool:
    """Whether a comparison keeping `kept` keeps at least what one keeping `other` would."""
    if not kept.complete:
        return True
    return other.complete and other.files <= kept.files and other.dirs <= kept.dirs


class UnreadableTeller:
    """What one link session tells its target of the source's unreadable paths (module doc)."""

    def __init__(self) -> None:
        self._told: Unreadable | None = None  # the target keeps at least this
        self._exact = False  # ... and exactly this (told as a replacement)
        # The set when the target was first found to keep more than it (a shrink, or a first
        # word told as an addition), and the head then: every record journaled before it shrank
        # is at or below that head, so the replacement goes once the session has sent that far,
        # even if the head moved on meanwhile (a busy source: it moves at every turn).
        self._shrink: tuple[Unreadable, int] | None = None
        self._warned_cut = False

    def to_tell(self, now: Unreadable, at: int, sent_upto: int) -> SourceUnreadable | None:
        """The message to send now, if any.

        Args:
            now: the set as it is now.
            at: a seq at or past every record journaled before `now` was taken.
            sent_upto: what the session has sent the target (its last Checkpoint).
        """
        message: SourceUnreadable | None = None
        if self._told is None:  # the first of a session goes in any case: a relay waits for it
            self._told, self._exact = now, sent_upto >= at
            message = to_wire(now, replace=self._exact)
        elif sent_upto >= at:
            self._shrink = None
            if not (self._exact and (now is self._told or now == self._told)):
                self._told, self._exact = now, True
                message = to_wire(now, replace=True)
        elif self._shrink is not None and sent_upto >= self._shrink[1]:
            # What left the set since the shrink was seen may have records past its head: kept.
            kept = union(now, self._shrink[0])
            self._shrink = None
            if not (self._exact and kept == self._told):
                self._told, self._exact = kept, True
                message = to_wire(kept, replace=True)
        elif not covers(self._told, now):
            self._told = union(self._told, now)
            message = to_wire(now, replace=False)
        if self._shrink is None and not (self._exact and self._told == now):
            self._shrink = (now, at)
        if message is not None and not message.complete and self._told.complete:
            self._warn_cut()
        return message

    def _warn_cut(self) -> None:
        if not self._warned_cut:
            self._warned_cut = True  # once a session
            logger.warning(
                "the source's unreadable paths are over %s paths or %s bytes: a relay is told "
                "them cut (incomplete), and its comparisons with its children erase nothing",
                MAX_UNREADABLE_PATHS,
                MAX_UNREADABLE_BYTES,
            )


class KeptUnreadable:
    """What a relay keeps of its parent's word on the source's unreadable paths, for a mapping.

    Kept in `directory` (the mapping's spool directory) across restarts: a relay that compares
    with a child before its parent has told it again keeps what it kept before. A path kept for
    longer than it is unreadable only keeps a name on a child a little longer (never a loss);
    the parent's next replacement, once it has sent what made the path readable, ends that.

    An older word on disk is a loss (a path unreadable since would be erased on a child): the
    file is written durably (fsync before the rename), removed when it cannot be written, and a
    missing one where the spool already streamed (`streamed`) is unknown: erase nothing until
    the parent tells the set again. At most MAX_UNREADABLE_PATHS and MAX_UNREADABLE_BYTES are
    kept; additions past that leave the set cut, marked incomplete.

    Error handling: what cannot be read or written is logged; the set in memory stays right.
    """

    def __init__(self, directory: Path, *, streamed: bool = False) -> None:
        self._path = directory / STATE_FILE
        self._saved = False  # the file holds `now`
        self.now, why = self._load(streamed)
        if not self.now.complete:
            _warn_incomplete(self._path, why)

    def _load(self, streamed: bool) -> tuple[Unreadable, str]:
        """The set saved, and why it is incomplete if it is."""
        try:
            state = json.loads(self._path.read_text())
            now = Unreadable(
                files=frozenset(str(p) for p in state["files"]),
                dirs=frozenset(str(p) for p in state["dirs"]),
                complete=state["complete"] is True,
            )
        except FileNotFoundError:
            if not streamed:  # a new relay: nothing was told, nothing is missing
                return NOTHING_UNREADABLE, ""
            return Unreadable(complete=False), "not saved (a save failed?), the spool was streamed"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return Unreadable(complete=False), f"cannot read it: {exc}"
        self._saved = True
        return now, "saved incomplete"

    def learn(self, message: SourceUnreadable) -> None:
        """Take our parent's word (in a worker thread: it writes the state file)."""
        told = from_wire(message)
        now = told if message.replace else _bounded(union(self.now, told))
        why = "told incomplete" if not told.complete else "additions past the bounds"
        self._set(now, why)

    def forget(self) -> None:
        """Our parent never tells (an older release): keep nothing, as a relay did before (in a
        worker thread). A word kept from another parent would stay in force for ever."""
        if self.now != NOTHING_UNREADABLE:
            logger.warning(
                "the relay's parent does not tell the source's unreadable paths (an older "
                "release): dropping the %s kept; comparisons with children erase what the "
                "relay's tree lacks",
                len(self.now.files) + len(self.now.dirs),
            )
        self._set(NOTHING_UNREADABLE, "")

    def _set(self, now: Unreadable, why: str) -> None:
        """Keep `now` (incomplete: `why`), in memory and on disk."""
        if now == self.now and self._saved:
            return
        if not now.complete and self.now.complete:
            _warn_incomplete(self._path, why)
        elif now.complete and not self.now.complete:
            logger.info("the source's unreadable paths are all known again: %s", self._path)
        self.now = now
        self._save(now)

    def _save(self, now: Unreadable) -> None:
        state = {"files": sorted(now.files), "dirs": sorted(now.dirs), "complete": now.complete}
        tmp = self._path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(state))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
            fsync_dir(self._path.parent)
            self._saved = True
        except OSError as exc:  # kept in memory; an older file must not outlive a restart
            self._saved = False
            logger.warning("cannot save %s, removing it: %s", self._path, exc)
            self._remove()

    def _remove(self) -> None:
        """No word on disk reads as unknown after a restart (erase nothing): never an older one.
        An unlink needs no free space."""
        try:
            self._path.unlink(missing_ok=True)
            fsync_dir(self._path.parent)
        except OSError as exc:
            logger.error("cannot remove %s, a restart would read an older set: %s", self._path, exc)


def _bounded(unreadable: Unreadable) -> Unreadable:
    """The set, cut to what one message holds and marked incomplete if it had more."""
    paths = (*unreadable.files, *unreadable.dirs)
    size = sum(len(p.encode("utf-8", "surrogateescape")) for p in paths)
    if len(paths) <= MAX_UNREADABLE_PATHS and size <= MAX_UNREADABLE_BYTES:
        return unreadable
    return from_wire(to_wire(unreadable, replace=True))


def _warn_incomplete(path: Path, why: str) -> None:
    logger.warning(
        "the source's unreadable paths are not all known (%s: %s; at most %s paths or %s "
        "bytes are kept): the relay's comparisons with its children erase nothing until its "
        "parent tells them all",
        path,
        why,
        MAX_UNREADABLE_PATHS,
        MAX_UNREADABLE_BYTES,
    )
