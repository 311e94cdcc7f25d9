"""Closed writes: which files of a source's batch had a close-write, by the names they have now.

The hot-file hold (`SourceMapping._hold_hot`) keeps back a write it cannot tell from one still in
progress: one whose path had no close-write in the batch. A file closed and then renamed (with
its directory or alone) is written under its new name, and an O_TMPFILE file closed under its
anonymous name ("#<inode>") is written under the name linkat(2) gave it: both were closed.
"""

from __future__ import annotations

from collections.abc import Sequence

from relaysync.watch._fsevent import FsEvent, anonymous_inode
from relaysync.watch.changes import PendingChange


def closed_paths(events: Sequence[FsEvent]) -> tuple[set[str], set[str]]:
    """The paths of a batch's close-writes ("write"), and of its files changed or created with
    no close-write ("modify": a writer may have paused, its file still open), less those."""
    closed = {e.path for e in events if e.kind == "write"}
    return closed, {e.path for e in events if e.kind == "modify"} - closed


def note_closed(closed: set[str], changes: Sequence[PendingChange]) -> None:
    """Add to `closed` (paths of close-writes) the names `changes` give those files.

    A directory's rename carries the closed paths below its old name to its new name (only
    added: what a rename replaced at a closed path is taken for closed too, at worst sent
    before its own close-write, which sends it again). A file's rename needs nothing: the hold
    knows it by the inode number its rename carries. A write of a file whose inode number a closed anonymous
    name carries is closed. Costs a set lookup per change when none of this applies.
    """
    anonymous: set[int] | None = None
    for change in changes:
        if change.op == "rename" and change.entry is not None and change.entry.kind == "d":
            _carry(closed, change.path, change.new_path)
        elif change.op == "write" and change.path not in closed and change.entry is not None:
            if anonymous is None:
                anonymous = {i for p in closed if "#" in p and (i := anonymous_inode(p))}
            if change.entry.ino in anonymous:
                closed.add(change.path)


def _carry(closed: set[str], old: str, new: str) -> None:
    prefix = f"{old}/"
    closed.update([new + p[len(old) :] for p in closed if p.startswith(prefix)])
