"""The source's unreadable paths down a relay tree: told on each link, kept by each relay.

A source's comparison keeps on its targets the names of the files and directories it finds there
but cannot read now (transfer/compare.py `Unreadable`). A relay compares its children against its
own tree, which lacks what the source could not read when the relay was synced, so it must know
those names too, or its comparison erases them on a child. Each link tells its target the set
(`SourceUnreadable`, to a peer that announced CAP_UNREADABLE) and a relay keeps the last one per
mapping, on disk, so that its comparisons after a restart keep them before its parent tells it
again; its own links tell its children what it keeps.

A set that shrinks (a path readable again) is told only once the target has been sent every
record journaled before it shrank (`UnreadableTeller`): the record that brings the path is what
lets a relay's comparison stop keeping it. Until then what is new in the set is told as an
addition, never as a replacement. A set over the message's bounds goes cut, marked incomplete:
a relay that keeps an incomplete set erases nothing in its comparisons.
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

    def to_tell(self, now: Unreadable, at: int, sent_upto: int) -> SourceUnreadable | None:
        """The message to send now, if any.

        Args:
            now: the set as it is now.
            at: a seq at or past every record journaled before `now` was taken.
            sent_upto: what the session has sent the target (its last Checkpoint).
        """
        if self._told is None:  # the first of a session goes in any case: a relay waits for it
            self._told, self._exact = now, sent_upto >= at
            return to_wire(now, replace=self._exact)
        if sent_upto >= at:
            if self._exact and (now is self._told or now == self._told):
                return None
            self._told, self._exact = now, True
            return to_wire(now, replace=True)
        if covers(self._told, now):
            return None
        self._told = union(self._told, now)
        self._exact = False
        return to_wire(now, replace=False)


class KeptUnreadable:
    """What a relay keeps of its parent's word on the source's unreadable paths, for a mapping.

    Kept in `directory` (the mapping's spool directory) across restarts: a relay that compares
    with a child before its parent has told it again keeps what it kept before. A path kept for
    longer than it is unreadable only keeps a name on a child a little longer (never a loss);
    the parent's next replacement, once it has sent what made the path readable, ends that.
    """

    def __init__(self, directory: Path) -> None:
        self._path = directory / STATE_FILE
        self.now = self._load()

    def _load(self) -> Unreadable:
        try:
            state = json.loads(self._path.read_text())
            return Unreadable(
                files=frozenset(str(p) for p in state["files"]),
                dirs=frozenset(str(p) for p in state["dirs"]),
                complete=bool(state["complete"]),
            )
        except FileNotFoundError:
            return NOTHING_UNREADABLE
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unknown: keep every name on the children until the parent tells us again.
            logger.warning(
                "cannot read %s, erasing nothing on children for now: %s", self._path, exc
            )
            return Unreadable(complete=False)

    def learn(self, message: SourceUnreadable) -> None:
        """Take our parent's word (in a worker thread: it writes the state file)."""
        told = from_wire(message)
        now = told if message.replace else union(self.now, told)
        if now == self.now:
            return
        self.now = now
        state = {"files": sorted(now.files), "dirs": sorted(now.dirs), "complete": now.complete}
        tmp = self._path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self._path)
        except OSError as exc:  # kept in memory all the same; a restart relearns it
            logger.warning("cannot save %s: %s", self._path, exc)
