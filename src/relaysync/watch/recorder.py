"""The change recorder: turns watcher events into pending changes and keeps the manifest in step.

The agent calls `detect()` (reads disk and manifest), appends the result to the journal, then
calls `apply()` with the journaled records. The manifest is therefore never ahead of the
journal: after a crash, anything the manifest lacks is found again by a scan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import msgspec

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.changes import JournalRecord, PendingChange
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Entry, Manifest, ancestors
from relaysync.watch.scanner import changes_for, make_entry, scan_tree

logger = logging.getLogger(__name__)


class ChangeRecorder:
    """Detects changes under `root` against `manifest`, and applies journaled ones to it.

    Args:
        root: the mapped directory on this side.
        manifest: this side's manifest.
        path_filter: the mapping's filter.
    """

    def __init__(self, root: Path, manifest: Manifest, path_filter: PathFilter) -> None:
        self._root = root
        self._manifest = manifest
        self._filter = path_filter

    # --- detect ---

    def detect(self, events: Sequence[FsEvent]) -> list[PendingChange]:
        """Return the changes the events stand for, in an order that replays correctly.

        Reads the disk and the manifest; does not write the manifest. Within one call, the
        changes already decided are taken into account (a path written twice is sent once).
        """
        batch = _Batch(self._manifest)
        for event in events:
            handler = getattr(self, f"_on_{event.kind}")
            handler(batch, event)
        return batch.out

    def _on_write(self, batch: _Batch, event: FsEvent) -> None:
        self._restat(batch, event.path)

    _on_attr = _on_write
    _on_symlink = _on_write

    def _on_mkdir(self, batch: _Batch, event: FsEvent) -> None:
        self._on_rescan(batch, event)

    def _restat(self, batch: _Batch, path: str) -> None:
        entry = make_entry(self._root, path)
        if entry is None or not self._filter.accepts(path, is_dir=entry.kind == "d"):
            return
        self._ensure_parents(batch, path)
        batch.add_all(changes_for(batch.get(path), entry))

    def _on_delete(self, batch: _Batch, event: FsEvent) -> None:
        old = batch.get(event.path)
        if old is not None:
            batch.add(PendingChange(op="delete", path=event.path, base_hash=old.hash))

    def _on_move(self, batch: _Batch, event: FsEvent) -> None:
        src_ok = self._filter.accepts(event.path, is_dir=event.is_dir)
        dst_ok = self._filter.accepts(event.new_path, is_dir=event.is_dir)
        old = batch.get(event.path) if src_ok else None
        if not dst_ok:
            if old is not None:
                batch.add(PendingChange(op="delete", path=event.path, base_hash=old.hash))
            return
        if old is None:
            self._rescan(batch, event.new_path)
            return
        self._ensure_parents(batch, event.new_path)
        replaced = batch.get(event.new_path)
        moved = msgspec.structs.replace(old, path=event.new_path)
        batch.add(PendingChange(op="rename", path=event.path, new_path=event.new_path, entry=moved,
                                base_hash=replaced.hash if replaced else b""))

    def _on_rescan(self, batch: _Batch, event: FsEvent) -> None:
        self._rescan(batch, event.path)

    def _rescan(self, batch: _Batch, path: str) -> None:
        if path:
            self._ensure_parents(batch, path)
        batch.add_all(scan_tree(self._root, self._manifest, self._filter, subdir=path))

    def _ensure_parents(self, batch: _Batch, path: str) -> None:
        """Emit mkdir for directories above `path` the manifest does not know yet, top first."""
        missing = [p for p in ancestors(path) if p and batch.get(p) is None]
        for parent in reversed(missing):
            entry = make_entry(self._root, parent)
            if entry is not None and entry.kind == "d":
                batch.add(PendingChange(op="mkdir", path=parent, entry=entry))

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


class _Batch:
    """The changes decided so far in one detect() call, and the state they lead to."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._state: dict[str, Entry | None] = {}
        self.out: list[PendingChange] = []

    def get(self, path: str) -> Entry | None:
        if path in self._state:
            return self._state[path]
        return self._manifest.get(path)

    def add(self, change: PendingChange) -> None:
        self.out.append(change)
        if change.op in ("delete", "rename"):
            self._state[change.path] = None
        target = change.new_path or change.path
        if change.entry is not None:
            self._state[target] = change.entry

    def add_all(self, changes: Sequence[PendingChange]) -> None:
        for change in changes:
            self.add(change)
