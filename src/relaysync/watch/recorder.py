"""The change recorder: turns watcher events into pending changes and keeps the manifest in step.

The agent calls `detect()` (reads disk and manifest), appends the result to the journal, then
calls `apply()` with the journaled records. The manifest is therefore never ahead of the
journal: after a crash, anything the manifest lacks is found again by a scan. (Inode numbers and
ctimes, local bookkeeping that is never replicated, are the exception: see `detect()`.)

A batch that renames or deletes a directory and then touches what was below it (`mv d e; rm
e/f`, `mv current old; mkdir current`) cannot be judged against the manifest, which still holds
the old tree: `detect()` stops there and hands back the rest, to be detected once the changes
before it are applied.

A rename is journaled from the manifest's entry, yet what was renamed may have changed since (a
write whose close-write is read in the batch of the rename, or before it but detected after it,
finds its old name gone: `echo >> app.log && mv app.log app.log.1`, `cp -r build/. staging/ &&
mv staging live`), and below a renamed directory the filter may judge the files otherwise
(`include=["^public/"]`, `mv staging public`). So a renamed file is looked at again under its
new name, and a renamed directory is rescanned once the rename is applied: a scan reads only the
stat of files that did not change, and records nothing for them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec

from relaysync.errors import SourceListError, SourceReadError
from relaysync.watch._detect_batch import DetectBatch, StaleManifest, then_rescans
from relaysync.watch._fsevent import FsEvent, anonymous_inode
from relaysync.watch._scan_renames import pair_renames
from relaysync.watch.changes import JournalRecord, PendingChange
from relaysync.watch.content_cache import MappingContent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Entry, Manifest, ancestors
from relaysync.watch.scanner import (
    _kind_of,
    changes_for,
    entry_dir,
    entry_from_stat,
    lstat_in,
    make_entry,
    same_stat,
    scan,
)
from relaysync.watch.target_policy import TargetPolicy

logger = logging.getLogger(__name__)

_GONE = (FileNotFoundError, NotADirectoryError)


class Detection(NamedTuple):
    """What one `detect()` call decided: `changes`, and the `rest` of the events, not looked at
    yet; `unreadable`, the files that are there but could not be read to hash and the
    directories that could not be listed (SourceListError): no change is recorded for them nor
    below them (never a delete): look at them again later."""

    changes: list[PendingChange]
    rest: list[FsEvent]
    unreadable: tuple[SourceReadError, ...] = ()


class ChangeRecorder:
    """Detects changes under `root` against `manifest`, and applies journaled ones to it.

    Args:
        root: the mapped directory on this side.
        manifest: this side's manifest.
        path_filter: the mapping's filter.
        hard_links: follow hard links (a source): a file written through one of its names
            changes its other names too, and the manifest's inode numbers find them. A target's
            start-up scan passes False: it never watches; its receiver's rows carry no inode
            numbers, its scan notes the ones it finds (a file under another one is hashed).
        policy: a target's start-up scan reads its disk through its policy (links refused,
            mode bits removed: watch/target_policy.py); None for a source.
        cache: a source's: where small files' content read to hash is kept for its links
            (watch/content_cache.py).
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        path_filter: PathFilter,
        *,
        hard_links: bool = True,
        policy: TargetPolicy | None = None,
        cache: MappingContent | None = None,
    ) -> None:
        self._root = root
        self._manifest = manifest
        self._filter = path_filter
        self._hard_links = hard_links
        self._policy = policy
        self._cache = cache

    # --- detect ---

    def detect(self, events: Sequence[FsEvent], *, stop_after: int = 0) -> Detection:
        """Return the changes the leading events stand for, in an order that replays correctly.

        Reads the disk and the manifest. Within one call, the changes already decided are taken
        into account (a path written twice is sent once). The call stops before an event that
        would be judged against stale manifest state: one below a path this call deleted or
        renamed (either name), a scan of a subtree holding one, or a write of a hard-linked
        file with another name below one. Those events come back as `rest`: apply the changes,
        then detect the rest. The first event is always taken, so every call makes progress.
        A directory renamed is rescanned under its new name in the rest, after the events that
        are stale already (see the module docstring).
        An event whose path, or a directory on its way, cannot be read records no change (what
        it decided before that stays) and is noted in `unreadable`. With `stop_after`, the call
        also stops after the event that brought its changes to that many (the rest come back as
        `rest`): a first scan's groups of top-level entries hold one entry's changes more at most.

        The manifest is written in one way only: inode numbers and ctimes of files found
        unchanged but for them (`Manifest.set_stat_notes`), bookkeeping no change carries.
        """
        batch = DetectBatch(self._manifest)
        rest: list[FsEvent] = []
        for i, event in enumerate(events):
            handler = getattr(self, f"_on_{event.kind}")
            try:
                handler(batch, event)
            except StaleManifest:
                if i == 0:  # unreachable: an empty batch holds nothing stale
                    raise
                rest = list(events[i:])
                break
            except SourceReadError as err:  # a directory on its way cannot be opened
                batch.unreadable.append(err.bare())
            if stop_after and len(batch.out) >= stop_after and i + 1 < len(events):
                rest = list(events[i + 1 :])
                break
        if batch.follow:
            rest = then_rescans(rest, batch.follow)
        if batch.stat_notes:  # a target's too: else such a file is hashed at every start
            self._manifest.set_stat_notes((p, i, c) for p, (i, c) in batch.stat_notes.items())
        return Detection(batch.out, rest, tuple(batch.unreadable))

    def _on_write(self, batch: DetectBatch, event: FsEvent) -> None:
        self._restat(batch, event.path)
        if "#" in event.path and (ino := anonymous_inode(event.path)) is not None:
            self._on_anonymous(batch, event.path, ino)

    def _on_anonymous(self, batch: DetectBatch, path: str, ino: int) -> None:
        """A close-write under the name of an O_TMPFILE file, "#<inode>", never on disk: the file
        is published with linkat(2), whose IN_CREATE the watcher cannot tell from an open(2)
        still writing. Its names are found in its directory by that inode number."""
        head = path.rpartition("/")[0]
        for name in batch.inode_names(self._root, head).get(ino, ()):
            other = f"{head}/{name}" if head else name
            if other != path:
                self._restat(batch, other)

    _on_attr = _on_write
    _on_modify = _on_write
    _on_symlink = _on_write

    def _on_mkdir(self, batch: DetectBatch, event: FsEvent) -> None:
        self._on_rescan(batch, event)

    def _restat(
        self,
        batch: DetectBatch,
        path: str,
        *,
        follow_links: bool = True,
        linked_to: os.stat_result | None = None,
        digest: bytes = b"",
    ) -> None:
        """Diff one path with the batch. A file with other hard links has them restatted too,
        unless `follow_links` is False; they are restatted with `linked_to`, the stat of the
        name written, whose content hash `digest` they share while they are that file."""
        old = batch.get(path)  # first: raises StaleManifest before anything is added
        with entry_dir(self._root, path) as dir_fd:
            st = lstat_in(self._root, path, dir_fd)
            if st is None:
                return
            same_file = linked_to is not None and (
                st.st_dev,
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
            ) == (linked_to.st_dev, linked_to.st_ino, linked_to.st_size, linked_to.st_mtime_ns)
            try:
                entry = entry_from_stat(
                    self._root,
                    path,
                    st,
                    hash_=digest if same_file else None,
                    dir_fd=dir_fd,
                    # an excluded path's content is never sent: not kept (the filter is asked
                    # only where there is a cache: a target's recorder keeps none)
                    cache=(
                        self._cache
                        if self._cache is not None and self._filter.accepts(path, is_dir=False)
                        else None
                    ),
                )
            except SourceReadError as err:
                batch.unreadable.append(err.bare())
                return
        if entry is None or not self._filter.accepts(path, is_dir=entry.kind == "d"):
            return
        others = []
        if follow_links and entry.kind == "f" and st.st_nlink > 1 and self._hard_links:
            others = self._other_links(batch, entry)
        self._ensure_parents(batch, path)
        batch.add_all(changes_for(old, entry))
        batch.note_stat(old, entry)
        for other in others:
            if not batch.below_moved(other):  # else under a directory this very change replaced
                self._restat_link(batch, other, linked_to=st, digest=entry.hash)

    def _restat_link(
        self,
        batch: DetectBatch,
        path: str,
        *,
        linked_to: os.stat_result | None = None,
        digest: bytes = b"",
    ) -> None:
        """`_restat` of another name of a hard-linked file: one that cannot be read (its
        directory not listable) is looked at again later, the other names go on."""
        try:
            self._restat(batch, path, follow_links=False, linked_to=linked_to, digest=digest)
        except SourceReadError as err:
            batch.unreadable.append(err.bare())

    def _other_links(self, batch: DetectBatch, entry: Entry) -> list[str]:
        """The other names known for a file with several hard links: the manifest's, and those
        this batch recorded (a name renamed in the batch is known by its new path there).

        inotify reports a write or chmod for the name used only, yet every name shows it.
        Raises StaleManifest if a name lies below a directory this batch deleted or renamed: where it
        is now, only the manifest knows once the batch is applied.
        """
        paths = set(self._manifest.paths_with_inode(entry.ino)) | batch.paths_with_inode(entry.ino)
        paths.discard(entry.path)
        if any(batch.below_moved(p) for p in paths):
            raise StaleManifest(entry.path)
        return sorted(paths)

    def _on_delete(self, batch: DetectBatch, event: FsEvent) -> None:
        old = batch.get(event.path)
        if old is None:
            return
        if self._still_there(event.path):
            # The disk decides, not the event: a name deleted and made again, or an event
            # under a watch's label that is not where it happened (a watch left on a
            # directory moved away): never a delete of what is there.
            self._replaced(batch, event.path)
            return
        batch.add(PendingChange(op="delete", path=event.path, base_hash=old.hash))

    def _still_there(self, path: str) -> bool:
        """Whether something is at `path` now (or cannot be looked at: not taken for gone)."""
        try:
            with entry_dir(self._root, path) as dir_fd:
                return lstat_in(self._root, path, dir_fd) is not None
        except SourceListError:
            return True

    def _replaced(self, batch: DetectBatch, path: str) -> None:
        """`path`, deleted or moved onto: a file there now is hashed, whatever its stat (`rm f &&
        mv new f` may reuse f's inode number); else it is scanned (a directory, a delete...)."""
        with entry_dir(self._root, path) as dir_fd:
            st = lstat_in(self._root, path, dir_fd)
        if st is not None and stat.S_ISREG(st.st_mode) and self._filter.accepts(path, is_dir=False):
            self._restat(batch, path)
        else:
            self._rescan(batch, path)

    def _on_move(self, batch: DetectBatch, event: FsEvent) -> None:
        src_ok = self._filter.accepts(event.path, is_dir=event.is_dir)
        dst_ok = self._filter.accepts(event.new_path, is_dir=event.is_dir)
        old = batch.get(event.path) if src_ok else None
        if not dst_ok:
            if old is not None:
                batch.add(PendingChange(op="delete", path=event.path, base_hash=old.hash))
            return
        if old is None:
            self._replaced(batch, event.new_path)
            return
        replaced = batch.get(event.new_path)
        if not self._ensure_parents(batch, event.new_path):
            # Moved into a directory gone since (`mv f d/x; rm -r d`, read after the fact): a
            # rename there would leave the targets, and the manifest, a file under no directory.
            # The old name is judged as a delete (the disk decides: `mv d t; mkdir d`).
            self._on_delete(batch, FsEvent(kind="delete", path=event.path, is_dir=event.is_dir))
            return
        moved = msgspec.structs.replace(old, path=event.new_path)
        batch.add(
            PendingChange(
                op="rename",
                path=event.path,
                new_path=event.new_path,
                entry=moved,
                base_hash=replaced.hash if replaced else b"",
            )
        )
        if moved.kind == "d":  # below it: what changed unseen, what the filter judges otherwise
            batch.follow.append(FsEvent(kind="rescan", path=moved.path, is_dir=True))
        else:
            self._recheck_moved(batch, moved)
            self._recheck_old_name(batch, event.path)

    def _recheck_moved(self, batch: DetectBatch, moved: Entry) -> None:
        """Record a write of a renamed file whose disk state is not the one renamed (the write
        before the rename found the old name gone). One lstat when it is the same; its ctime,
        which the rename moved, is not looked at (a scan hashes it once, then notes it)."""
        with entry_dir(self._root, moved.path) as dir_fd:
            st = lstat_in(self._root, moved.path, dir_fd)
        if st is None or (
            _kind_of(st) == moved.kind and same_stat(moved, moved.kind, st, by_ctime=False)
        ):
            return
        if stat.S_ISDIR(st.st_mode):  # a directory there since: what it holds is scanned too
            batch.follow.append(FsEvent(kind="rescan", path=moved.path, is_dir=True))
        try:
            self._restat(batch, moved.path)  # now: a later event of this batch may be below it
        except StaleManifest:  # another hard link below a directory moved in this batch
            batch.follow.append(FsEvent(kind="rescan", path=moved.path))

    def _recheck_old_name(self, batch: DetectBatch, path: str) -> None:
        """Record what is at the old name of a renamed file or link now: an exchange (`mv
        --exchange a b`, renameat2(RENAME_EXCHANGE): the atomic switch of `current` and
        `previous`) is two renames, a->b and b->a, and each leaves the other's file at its old
        name, which the rename alone takes for gone. One lstat when nothing is there (a rename
        of a temp name into place)."""
        with entry_dir(self._root, path) as dir_fd:
            st = lstat_in(self._root, path, dir_fd)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):  # scanned once the rename is applied (it reads the manifest)
            batch.follow.append(FsEvent(kind="rescan", path=path, is_dir=True))
            return
        try:
            self._restat(batch, path)
        except StaleManifest:  # another hard link below a directory moved in this batch
            batch.follow.append(FsEvent(kind="rescan", path=path))

    def _on_rescan(self, batch: DetectBatch, event: FsEvent) -> None:
        self._rescan(batch, event.path)

    def _rescan(self, batch: DetectBatch, path: str) -> None:
        batch.check_scan(path)  # the scan reads the manifest's subtree, not the batch
        result = scan(
            self._root,
            self._manifest,
            self._filter,
            subdir=path,
            policy=self._policy,
            cache=self._cache,
        )
        linked = result.linked if self._hard_links else []
        others = [self._other_links(batch, entry) for entry in linked]  # before anything is added
        if path:
            self._ensure_parents(batch, path)
        # the watcher's events of a rename that a scan saw first find nothing left to do
        changes = pair_renames(
            result.out,
            self._manifest.get,
            batch.changed_paths(),
            self._manifest.paths_with_inode,
        )
        if self._cache is not None and len(changes) < len(result.out):
            for change in changes:
                if change.op == "rename":  # read for a write that is not sent
                    self._cache.drop(change.new_path)
        batch.add_scanned(changes)
        batch.unreadable.extend(result.unreadable)
        batch.stat_notes.update((p, (i, c)) for p, i, c in result.stat_notes)
        for other in (p for paths in others for p in paths):
            # A name below a directory this scan found deleted is gone from disk too.
            if not batch.below_moved(other):
                self._restat_link(batch, other)

    def _ensure_parents(self, batch: DetectBatch, path: str) -> bool:
        """Emit mkdir for directories above `path` that the batch or manifest does not hold as
        directories, top first (a file held there is deleted first: `mv d/f x; rm -r d; mv f2
        d` then `mkdir d`); False if one of them is not a directory on disk (any more)."""
        held = {p: batch.get(p) for p in ancestors(path) if p}
        missing = [p for p, entry in held.items() if entry is None or entry.kind != "d"]
        for parent in reversed(missing):
            entry = make_entry(self._root, parent)
            if entry is None or entry.kind != "d":
                return False
            batch.add_all(changes_for(held[parent], entry))
        return True

    def detect_and_apply(self, events: Sequence[FsEvent]) -> list[PendingChange]:
        """Detect all of `events` and apply the changes, without a journal (a target's start-up
        scan, tests, benchmarks); return the changes, in order."""
        out: list[PendingChange] = []
        rest = list(events)
        while rest:
            changes, rest, _ = self.detect(rest)
            self.apply(changes)
            out.extend(changes)
        return out

    # --- apply ---

    def apply(self, records: Sequence[JournalRecord | PendingChange]) -> None:
        """Bring the manifest in step with journaled changes, in order."""
        puts: list[Entry] = []
        for rec in records:
            if rec.op in ("delete", "rename"):
                self._manifest.put_many(puts)
                puts = []
            if rec.op == "delete":
                self._manifest.remove_tree(rec.path)
            elif rec.op == "rename":
                self._manifest.rename_tree(rec.path, rec.new_path)
            if rec.entry is not None:
                puts.append(rec.entry)
        self._manifest.put_many(puts)
