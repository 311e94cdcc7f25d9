"""The newest-mtime rule: how a target folder that several sources write (an N:M job) resolves them.

Every member mapping of an N:M job has its own TargetFolder on the same root; its manifest holds
only the versions its own source sent (applied or not), never the other sources' files. A write
(whole file, delta, a rename onto the path) is applied only if it beats the version on disk:
a newer mtime_ns wins; with equal mtimes the larger content hash wins, so every target ends with
the same version whatever order the sources' streams arrive in. A delete (or a rename away) from a
source removes the path only if the version on disk is the one that source's folder committed
(same size and mtime as its manifest entry); otherwise the other source's file stays. Every skipped
or contested op is reported with `CommitRecord.conflict` (ok=True: it is resolved, not failed).

Conflict reasons: "older" and "tie" (this source's version lost), "rewritten" (another source
replaced the version this one deletes, renames or touches), "kind" (a directory or a non-file is
in the way), "newer" (this source's version replaced another source's).

Error handling: as in receiver.py; judging reads only lstat and, for a tie, the file's hash.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import xxhash

from relaysync.protocol.messages import (
    CommitRecord,
    Delete,
    DeltaStart,
    Erase,
    FileStart,
    MakeDir,
    Rename,
    SetAttr,
    SmallFile,
    Symlink,
)
from relaysync.transfer._tree_ops import _with_attrs
from relaysync.transfer.paths import parent_of, resolve_inside
from relaysync.transfer.receiver import ReceiverSession, ReportFn
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Entry

NEWEST_MTIME = "newest-mtime"  # MappingSpec.conflict of an N:M job's members
CONFLICT_RULES = ("", NEWEST_MTIME)  # "": the source is the truth (a plain mapping)
HASH_BLOCK_BYTES = 1024 * 1024
OwnerFn = Callable[
    [str, int, int], str
]  # (path, size, mtime_ns) -> node id of the source holding it


def session_for(folder: TargetFolder, journal_id: str, report: ReportFn) -> ReceiverSession:
    """The receiver session for a folder: the rule-applying one for a member of an N:M job."""
    if folder.conflict == NEWEST_MTIME:
        return ConflictSession(folder, journal_id, report)
    return ReceiverSession(folder, journal_id, report)


@dataclass
class DiskVersion:
    """What is on disk at a path: kind, size, mtime, and the content hash on demand."""

    path: Path
    kind: str  # "f" | "l" | "d" | "?"
    size: int
    mtime_ns: int
    _hash: bytes | None = None

    def hash(self) -> bytes:
        if self._hash is None:
            self._hash = _hash_of(self.path, self.kind)
        return self._hash


def disk_version(path: Path) -> DiskVersion | None:
    """The version at `path` (never following a symlink), or None if nothing is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = (
        "f"
        if stat.S_ISREG(st.st_mode)
        else "l"
        if stat.S_ISLNK(st.st_mode)
        else "d"
        if stat.S_ISDIR(st.st_mode)
        else "?"
    )
    return DiskVersion(path=path, kind=kind, size=st.st_size, mtime_ns=st.st_mtime_ns)


def judge(mtime_ns: int, content_hash: bytes, disk: DiskVersion | None) -> str:
    """Return "" if a version (mtime_ns, content_hash) may replace `disk`, else why not.

    The same version is admitted again (ops are idempotent); a directory is never replaced by a
    file here (it may hold other sources' files).
    """
    if disk is None:
        return ""
    if disk.kind not in ("f", "l"):
        return "kind"
    if mtime_ns != disk.mtime_ns:
        return "" if mtime_ns > disk.mtime_ns else "older"
    return "" if content_hash >= disk.hash() else "tie"


def is_version(entry: Entry | None, disk: DiskVersion | None) -> bool:
    """Whether `disk` is the version a folder's manifest entry describes."""
    if entry is None or disk is None or entry.kind != disk.kind:
        return False
    if disk.kind == "l":
        return True  # a link's own mtime is not kept; its target is its content
    return (entry.size, entry.mtime_ns) == (disk.size, disk.mtime_ns)


def _hash_of(path: Path, kind: str) -> bytes:
    try:
        if kind == "l":
            return xxhash.xxh3_128(os.readlink(path).encode("utf-8", "surrogateescape")).digest()
        digest = xxhash.xxh3_128()
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK_BYTES):
                digest.update(block)
        return digest.digest()
    except OSError:
        return b""


class ConflictSession(ReceiverSession):
    """A ReceiverSession for a member of an N:M job: every op goes through the newest-mtime rule.

    Staged files are judged when the batch is flushed, under the lock the folder shares with the
    other members on the same root, so judging and renaming into place are one step for them.
    """

    stages_new_dirs = False  # each staged file is judged against the disk at its final name

    def __init__(self, folder: TargetFolder, journal_id: str, report: ReportFn) -> None:
        super().__init__(folder, journal_id, report)
        self._lock: threading.RLock = folder.lock
        self._contest: tuple[str, str] | None = (
            None  # (reason, other source) of the op being applied
        )

    # --- files ---

    def flush(self) -> None:
        with self._lock:
            losers = self._judge_staged()
            super().flush()
            if losers:  # its own version, superseded: the source's next comparison finds it equal
                self.folder.manifest.put_many(losers)

    def _judge_staged(self) -> list[Entry]:
        """Drop the staged files that lose to the version on disk; annotate the contested ones."""
        pending = self._pending
        kept_files, kept_entries, losers = [], [], []
        for incoming, entry, i in zip(
            self._batch.files(), pending.entries, range(len(pending.records)), strict=True
        ):
            disk = disk_version(incoming.final)
            owner = self._owner(entry.path, disk)
            reason = judge(entry.mtime_ns, entry.hash, disk)
            if reason:
                incoming.discard()
                losers.append(entry)
                pending.records[i] = _contested(pending.records[i], reason, owner)
                continue
            if (
                owner
                and disk is not None
                and not (disk.mtime_ns == entry.mtime_ns and disk.hash() == entry.hash)
            ):
                pending.records[i] = _contested(pending.records[i], "newer", owner)
            kept_files.append(incoming)
            kept_entries.append(entry)
        if losers:
            self._batch.replace_files(kept_files)
            self._applied.extend(r for r in pending.records if r.conflict and r.conflict != "newer")
            pending.records = [
                r for r in pending.records if not r.conflict or r.conflict == "newer"
            ]
            pending.entries = kept_entries
        return losers

    def _owner(self, path: str, disk: DiskVersion | None) -> str:
        """The other member source whose committed version is on disk ("" if none or ours)."""
        if disk is None or self.folder.owner_of is None:
            return ""
        return self.folder.owner_of(path, disk.size, disk.mtime_ns)

    # Resolving a path and creating its temp file are one step for the members: another member's
    # rename or link (under the same lock) cannot slip a symlink in between.

    def _small_file(self, msg: SmallFile) -> None:
        with self._lock:
            super()._small_file(msg)

    def _start_file(self, msg: FileStart) -> None:
        with self._lock:
            super()._start_file(msg)

    def _start_delta(self, msg: DeltaStart) -> None:
        with self._lock:
            super()._start_delta(msg)

    # --- other ops ---

    def _record(self, *args: object, **kwargs: object) -> CommitRecord:
        record = super()._record(*args, **kwargs)  # type: ignore[arg-type]
        if self._contest is not None:
            record = _contested(record, *self._contest)
        return record

    def _apply_op(self, msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase) -> None:
        self._contest = None
        try:
            with self._lock:
                super()._apply_op(msg)
                self.folder.tree_changes.forget()  # every member opens its directories anew
        finally:
            self._contest = None

    def _apply_op_unchecked(
        self, msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase
    ) -> dict[str, Any]:
        """Apply the op by the job's rules. What a delete or rename removed is not surveyed
        here ({}): the purger takes the path for a possible directory, as from an older agent."""
        root, manifest = self.folder.root, self.folder.manifest
        match msg:
            case Erase():
                return {}  # extra names may be other sources' files: deletes come from journal records only
            case Delete():
                self._delete(msg.path)
            case Rename():
                self._rename_by_rule(msg)
            case SetAttr():
                disk = disk_version(resolve_inside(root, msg.path))
                entry = manifest.get(msg.path)
                if disk is None or is_version(entry, disk):
                    return super()._apply_op_unchecked(msg)
                self._contest = ("rewritten", self._owner(msg.path, disk))
                if entry is None:
                    return {}
                if judge(msg.mtime_ns, entry.hash, disk):
                    manifest.put_many([_with_attrs(entry, msg.mode, msg.mtime_ns)])
                else:  # ours is newer, but its content is not here: the next comparison sends it
                    manifest.remove_tree(msg.path)
            case MakeDir() | Symlink():
                disk = disk_version(resolve_inside(root, msg.path))
                if disk is not None and _in_the_way(msg, disk, manifest.get(msg.path)):
                    self._contest = ("kind", self._owner(msg.path, disk))
                    return {}
                return super()._apply_op_unchecked(msg)
        return {}

    def _delete(self, path: str) -> None:
        """Remove what this source committed at `path` and under it, and nothing else."""
        root, manifest = self.folder.root, self.folder.manifest
        target = resolve_inside(root, path)
        disk = disk_version(target)
        entry = manifest.get(path)
        if disk is None:
            manifest.remove_tree(path)
            return
        if disk.kind != "d":
            if is_version(entry, disk):
                super()._apply_op_unchecked(Delete(seq=0, path=path))
            else:
                self._contest = ("rewritten", self._owner(path, disk))
                manifest.remove_tree(path)
            return
        mine = [e for e in manifest.iter_entries(path) if e.path != path]
        for e in sorted(mine, key=lambda e: e.path.count("/"), reverse=True):
            child = resolve_inside(root, e.path)
            if e.kind == "d":
                self._rmdir_at(e.path)
            elif is_version(e, disk_version(child)):
                self._keep_version(e.path)
                self._remove_at(e.path, sync=False)  # in its parent held open, as a Delete
        self._rmdir_at(path)
        if os.path.lexists(target):
            self._contest = ("rewritten", "")  # other sources' files stay in the directory
        with contextlib.suppress(FileNotFoundError):
            self._fsync(self._dirs.get(parent_of(path)))
        manifest.remove_tree(path)

    def _rename_by_rule(self, msg: Rename) -> None:
        """A rename is a delete of the old path and a write of the new one, each by the rule."""
        root, manifest = self.folder.root, self.folder.manifest
        old = disk_version(resolve_inside(root, msg.path))
        entry = manifest.get(msg.path)
        if old is not None and old.kind == "d":
            self._rename_dir(msg)
            return
        if entry is None or not is_version(entry, old):
            if (
                old is None
                and entry is None
                and os.path.lexists(resolve_inside(root, msg.new_path))
            ):
                return  # applied before (a replay)
            self._contest = ("rewritten", self._owner(msg.path, old))
            manifest.remove_tree(msg.path)  # the new name arrives whole with the next comparison
            return
        new = disk_version(resolve_inside(root, msg.new_path))
        owner = self._owner(msg.new_path, new)
        reason = judge(entry.mtime_ns, entry.hash, new)
        if not reason:
            if owner:
                self._contest = ("newer", owner)
            super()._apply_op_unchecked(msg)
            return
        self._contest = (reason, owner)
        super()._apply_op_unchecked(Delete(seq=0, path=msg.path))
        manifest.put_many([msgspec.structs.replace(entry, path=msg.new_path)])

    def _rename_dir(self, msg: Rename) -> None:
        """A directory moves whole (see docs/architecture.md), but never over another one that
        holds something, nor over a file or link: replacing it would remove other sources' files.
        Then this source's files leave the old name and its next comparison sends the new one."""
        root = self.folder.root
        new = disk_version(resolve_inside(root, msg.new_path))
        if new is None or (new.kind == "d" and _is_empty_dir(new.path)):
            super()._apply_op_unchecked(msg)
            return
        self._delete(msg.path)
        self._contest = ("kind", self._owner(msg.new_path, new))


def _is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _in_the_way(msg: MakeDir | Symlink, disk: DiskVersion, mine: Entry | None) -> bool:
    """Whether what is on disk stays in spite of a MakeDir or Symlink of this source.

    A directory is never replaced by a link, even this source's own (it may hold other sources'
    files; this source's delete of it comes first and leaves it only if they are there). A file
    or link stays unless it is this source's version.
    """
    if disk.kind == "d":
        return isinstance(msg, Symlink)
    return not is_version(mine, disk)


def _contested(record: CommitRecord, reason: str, other: str) -> CommitRecord:
    return msgspec.structs.replace(record, conflict=reason, conflict_with=other)


def forget_missing(folder: TargetFolder) -> int:
    """Drop the manifest entries whose path is gone from disk (the next comparison resends them).

    A member's folder is never rescanned like a plain target's: that would adopt the other
    sources' files as its own. Returns how many entries were dropped.
    """
    manifest = folder.manifest
    gone = [e.path for e in manifest.iter_entries() if not os.path.lexists(folder.root / e.path)]
    for path in gone:
        manifest.remove_tree(path)
    return len(gone)
