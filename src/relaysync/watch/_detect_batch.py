"""The state of one `ChangeRecorder.detect()` call: the changes decided so far, and where the
manifest's entries are stale until they are applied (`StaleManifest`)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import msgspec

from relaysync.errors import SourceListError, SourceReadError
from relaysync.watch._fsevent import FsEvent
from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import Entry, Manifest, ancestors, same_version
from relaysync.watch.scanner import open_dir_below


class StaleManifest(Exception):
    """An event needs state the manifest gets only once the changes detected so far are applied."""


def then_rescans(rest: list[FsEvent], follow: list[FsEvent]) -> list[FsEvent]:
    """`rest`, then the rescans in `follow` that no rescan in it covers (the watcher's own of a
    directory renamed before its watch existed, a path rescanned twice)."""
    covered = {e.path for e in rest if e.kind == "rescan"}
    out = list(rest)
    for event in follow:
        if event.path in covered or any(a in covered for a in ancestors(event.path)):
            continue
        covered.add(event.path)
        out.append(event)
    return out


class DetectBatch:
    """The changes decided so far in one detect() call, and the state they lead to.

    Per path, the state is this batch's latest change, else the manifest's entry. Below a path
    this batch deleted or renamed (either name) the manifest's entries are stale: `get` raises
    `StaleManifest` there rather than answer, and so does `check_scan` for a scan that would read them.
    """

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._state: dict[str, Entry | None] = {}
        self._moved: set[str] = set()  # deleted, renamed from or renamed to, in this batch
        self._moved_sorted: list[str] = []  # the same, sorted (check_scan)
        self.out: list[PendingChange] = []
        # path -> (inode number, ctime) of a file unchanged but for them (Manifest.set_stat_notes)
        self.stat_notes: dict[str, tuple[int, int]] = {}
        self.unreadable: list[SourceReadError] = []  # files there but not readable to hash
        self._by_ino: dict[int, set[str]] = {}
        self.follow: list[FsEvent] = []  # rescans to detect once this batch is applied
        self._listings: dict[str, dict[int, list[str]]] = {}  # dir -> inode -> names

    def inode_names(self, root: Path, dir_rel: str) -> dict[int, list[str]]:
        """The names in directory `dir_rel` by inode number, listed once per batch (no stat:
        the inode numbers are the listing's).

        Raises:
            SourceListError: the directory is there but cannot be listed.
        """
        if dir_rel not in self._listings:
            names: dict[int, list[str]] = {}
            dir_fd = open_dir_below(root, dir_rel)
            if dir_fd is not None:
                try:
                    with os.scandir(dir_fd) as it:
                        for de in it:
                            names.setdefault(de.inode(), []).append(de.name)
                except OSError as exc:
                    raise SourceListError.of(dir_rel, exc) from exc
                finally:
                    os.close(dir_fd)
            self._listings[dir_rel] = names
        return self._listings[dir_rel]

    def paths_with_inode(self, ino: int) -> set[str]:
        """The paths this batch recorded a file at with inode number `ino` (maybe changed since)."""
        return self._by_ino.get(ino, set())

    def below_moved(self, path: str) -> bool:
        """Whether a directory above `path` was deleted or renamed (either name) in this batch."""
        return bool(self._moved) and any(a in self._moved for a in ancestors(path))

    def get(self, path: str) -> Entry | None:
        # Checked before the state: a state below a moved path predates the move (after it,
        # nothing below is looked up, so nothing below is added) and is stale too.
        if self.below_moved(path):
            raise StaleManifest(path)
        if path in self._state:
            return self._state[path]
        return self._manifest.get(path)

    def check_scan(self, path: str) -> None:
        """Raise StaleManifest if a scan of `path` would read manifest entries this batch moved."""
        if not self._moved:
            return
        if path in self._moved or any(a in self._moved for a in ancestors(path)):
            raise StaleManifest(path)
        prefix = f"{path}/" if path else ""
        i = bisect.bisect_left(self._moved_sorted, prefix)
        if i < len(self._moved_sorted) and self._moved_sorted[i].startswith(prefix):
            raise StaleManifest(path)

    def add(self, change: PendingChange) -> None:
        self.out.append(change)
        if change.op in ("delete", "rename"):
            self._state[change.path] = None
            self._note_moved(change.path)
        if change.op == "rename":
            self._note_moved(change.new_path)
        target = change.new_path or change.path
        if change.entry is not None:
            self._state[target] = change.entry
            self.stat_notes.pop(target, None)
            if change.entry.ino:
                self._by_ino.setdefault(change.entry.ino, set()).add(target)

    def _note_moved(self, path: str) -> None:
        if path not in self._moved:
            self._moved.add(path)
            bisect.insort(self._moved_sorted, path)

    def add_all(self, changes: Sequence[PendingChange]) -> None:
        for change in changes:
            self.add(change)

    def changed_paths(self) -> Collection[str]:
        """The paths this batch decided a change of (their state is no longer the manifest's)."""
        return self._state.keys()

    def add_scanned(self, changes: Sequence[PendingChange]) -> None:
        """Add a scan's changes. A scan diffs with the manifest, so a path this batch changed
        already comes again: skipped if the batch holds that version, else based on it."""
        for change in changes:
            prior = self._state.get(change.path) if change.op != "delete" else None
            if prior is not None and change.entry is not None:
                if same_version(prior, change.entry):
                    continue
                change = msgspec.structs.replace(change, base_hash=prior.hash)
            self.add(change)

    def note_stat(self, old: Entry | None, new: Entry) -> None:
        """An unchanged file with another inode number or ctime than recorded gets a stat note."""
        if (
            new.kind == "f"
            and old is not None
            and (old.ino, old.ctime_ns) != (new.ino, new.ctime_ns)
            and same_version(old, new)
        ):
            self.stat_notes[new.path] = (new.ino, new.ctime_ns)
