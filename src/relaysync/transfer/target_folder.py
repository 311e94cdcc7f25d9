"""The folder a target holds for a mapping: its watermarks and the resumable partials it keeps."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from relaysync._util.fs import GONE_ERRNOS, parent_held, rmdir_in
from relaysync.constants import CHUNK_BYTES, MAX_MESSAGE_BYTES
from relaysync.protocol.messages import MAX_PARTIALS, Partial, PartialRef
from relaysync.transfer import staging
from relaysync.transfer.paths import TreeChanges, parent_of
from relaysync.transfer.versions import VersionKeeper
from relaysync.watch.manifest import Manifest
from relaysync.watch.target_policy import TargetPolicy

logger = logging.getLogger(__name__)

PARTIALS_BYTES = (
    MAX_MESSAGE_BYTES // 4
)  # MappingState lists partials up to this many bytes of paths
RESUME_MIN_BYTES = 8 * 1024 * 1024  # files this large keep a named partial that survives a crash
# A partial a full disk stopped is kept (retries resume it) while it grows; one that has not grown
# for this long is dropped at its next full disk, so the space it holds goes to other files (of
# any mapping on that disk) instead of being held for ever, e.g. by two partials waiting on each other.
FULL_DISK_HOLD_S = 600.0
DELTAS_KEPT = (
    1024  # sizes of the deltas the latest large versions came by (TargetFolder.note_delta)
)


@dataclass
class TargetFolder:
    """A folder this agent holds as a target of a mapping."""

    mapping_id: int
    source_node: str
    root: Path
    manifest: Manifest
    durable: bool
    link_secret: bytes = b""  # non-empty: the policy allows this source on a plain (TLS-off) link
    keep_versions: int = 0  # > 0: previous versions of replaced/deleted files kept beside the tree
    policy: TargetPolicy = TargetPolicy()  # which links and mode bits land here (safe, o-w)
    # The include and exclude patterns its manifest was scanned with: what it holds outside them
    # is not in it, so a change of them reopens the folder (agent/_target_role.py)
    filters: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    # Who may stream to us: our parent in the routing table (the source when there is none).
    parents: frozenset[str] = frozenset()
    route: tuple[str, ...] = ()  # the nodes the current session's stream came through (job log)
    route_epoch: int = 0  # of the routing table `parents` comes from
    members: frozenset[str] = (
        frozenset()
    )  # every node of the mapping: only they may hear ROUTES_STALE
    # A member of an N:M job (transfer/conflicts.py): "newest-mtime"; "" = the source is the truth.
    conflict: str = ""
    lock: threading.RLock = field(
        default_factory=threading.RLock
    )  # shared by the members on one root
    owner_of: Callable[[str, int, int], str] | None = (
        None  # (path, size, mtime_ns) -> other member source
    )
    # Ops that may have turned a directory under root into something else: shared by the members
    # on one root like `lock`, so that one member's rename or link there is never hidden from
    # another member's directory descriptors (paths.DirHandles).
    tree_changes: TreeChanges = field(default_factory=TreeChanges)
    # Partials a full disk stopped: path -> (bytes kept, since when (monotonic) they have not grown).
    _full_disk: dict[str, tuple[int, float]] = field(default_factory=dict, init=False, repr=False)
    # (path, version hash) -> bytes of the delta that brought that large version, for a relay to
    # resume a child's partial of it as a source would (transfer/relay.py); in memory only.
    _deltas: dict[tuple[str, bytes], int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.parents:
            self.parents = frozenset({self.source_node})

    def keeper(self) -> VersionKeeper | None:
        return VersionKeeper(self.root, self.keep_versions) if self.keep_versions > 0 else None

    def watermark(self, journal_id: str) -> int:
        return int(self.manifest.get_meta(f"watermark:{journal_id}") or 0)

    def set_watermark(self, journal_id: str, seq: int) -> None:
        self.manifest.set_meta(f"watermark:{journal_id}", str(seq))

    # Resumable partials of large files: path -> content hash (hex), kept in the manifest's meta.
    # A partial's file goes with its entry: when the file commits (renamed into place), when the
    # path is deleted, renamed or erased, when a newer version starts, when the mapping goes.

    def _partials(self) -> dict[str, str]:
        return dict(json.loads(self.manifest.get_meta("partials") or "{}"))

    def partial_relpath(self, path: str, content_hash: bytes) -> str:
        """The partial of this version of `path`, relative to root (only ever opened below it
        with no link followed: `_util.fs.open_regular_in`, `parent_held`)."""
        return staging.partial_name_for(Path(path), content_hash, self.mapping_id).as_posix()

    def add_partial(self, path: str, content_hash: bytes, *, made_dir: Path | None = None) -> None:
        """Record the partial of this version of `path` (an older version's goes); `made_dir`,
        the topmost directory its opening created, goes with it when it is removed (if empty)."""
        partials = self._partials()
        older = partials.get(path)
        if older is not None and older != content_hash.hex():
            self._remove_partial_file(path, older)  # an older version's, never to be resumed
        if made_dir is not None:
            self._note_made_dir(path, made_dir)
        partials[path] = content_hash.hex()
        self.manifest.set_meta("partials", json.dumps(partials))

    # Directories the receiver created for partials (path -> the topmost one, relative), removed
    # with the partial when they are empty and not in the manifest (a MakeDir or a scan made
    # them the tree's). Never a directory that was there before: an operator's, or the tree's.

    def _made_dirs(self) -> dict[str, str]:
        return dict(json.loads(self.manifest.get_meta("partial_dirs") or "{}"))

    def _note_made_dir(self, path: str, made_dir: Path) -> None:
        made = self._made_dirs()
        top = made_dir.relative_to(self.root).as_posix()
        if path not in made or len(top) < len(made[path]):  # both above path: the higher one
            made[path] = top
            self.manifest.set_meta("partial_dirs", json.dumps(made))

    def _remove_made_dirs(self, paths: Iterable[str]) -> None:
        made = self._made_dirs()
        tops = [(path, made.pop(path)) for path in paths if path in made]
        if not tops:
            return
        # Not in an N:M member's root: the other members' manifests, not ours, say which of its
        # directories are their trees' (a MakeDir of another source's may have made one so).
        for path, top in tops if not self.conflict else ():
            self._remove_empty_dirs(parent_of(path), top)
        self.manifest.set_meta("partial_dirs", json.dumps(made))

    def _remove_empty_dirs(self, rel: str, top: str) -> None:
        """Remove `rel` and its parents up to `top` while each is empty and not the tree's."""
        while rel and (rel == top or rel.startswith(f"{top}/")):
            if self.manifest.get(rel) is not None:
                return  # a directory of the tree (a MakeDir made it so), however empty
            try:
                rmdir_in(self.root, rel)  # never through a link, even one swapped in just now
            except OSError:
                return  # not empty (a committed file, someone's), gone, or not a directory
            self.tree_changes.forget()  # a session may hold the directory open
            rel = parent_of(rel)

    def drop_partial(self, path: str) -> None:
        """Forget the partial of `path` and remove its file (already gone after a commit)."""
        self.drop_partials([path])

    def drop_partials(self, paths: Iterable[str]) -> None:
        """`drop_partial` for many paths: one read and at most one write of the list."""
        partials = self._partials()
        doomed = [(path, partials.pop(path)) for path in paths if path in partials]
        self._forget(partials, doomed)

    def drop_partials_under(self, path: str) -> None:
        """Drop the partials at `path` and below it ("" = all): the path was deleted, renamed or erased."""
        partials = self._partials()
        prefix = f"{path}/" if path else ""
        doomed = [(p, partials.pop(p)) for p in list(partials) if p == path or p.startswith(prefix)]
        self._forget(partials, doomed)

    def drop_obsolete_partials(self, refs: Iterable[PartialRef]) -> int:
        """Drop the partials the source will never send the version of (a comparison found it
        deleted or replaced there): each only if it is still of that very version, never one of a
        newer version started since it was listed. Returns how many went."""
        partials = self._partials()
        doomed = [
            (ref.path, partials.pop(ref.path))
            for ref in refs
            if partials.get(ref.path) == ref.hash.hex()
        ]
        self._forget(partials, doomed)
        return len(doomed)

    def _forget(self, partials: dict[str, str], doomed: list[tuple[str, str]]) -> None:
        if not doomed:
            return
        for path, digest in doomed:
            self._remove_partial_file(path, digest)
            self._full_disk.pop(path, None)
        self.manifest.set_meta("partials", json.dumps(partials))
        self._remove_made_dirs(path for path, _digest in doomed)

    def _remove_partial_file(self, path: str, digest_hex: str) -> None:
        try:
            # In its directory held open: never through a symlink a local user put (or puts
            # now) where a directory was.
            with parent_held(self.root, self.partial_relpath(path, bytes.fromhex(digest_hex))) as (
                parent,
                name,
            ):
                os.unlink(name, dir_fd=parent)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:  # gone, or its way is not plain directories: not ours
                return
            # the space stays taken until the next start's clean-up
            logger.warning("could not remove partial of %s: %s", path, exc)

    def keep_after_full_disk(self, path: str, kept: int) -> bool:
        """Whether the partial of `path`, cut by a full disk to `kept` bytes, stays (FULL_DISK_HOLD_S)."""
        now = time.monotonic()
        held, since = self._full_disk.get(path, (-1, now))
        if kept != held:  # it grew since the last full disk (or this is the first): a fresh hold
            self._full_disk[path] = (kept, now)
        elif now - since >= FULL_DISK_HOLD_S:
            del self._full_disk[path]
            return False
        return True

    def partial_hashes(self) -> dict[str, bytes]:
        """Path -> content hash of every partial this folder keeps."""
        return {path: bytes.fromhex(digest) for path, digest in self._partials().items()}

    def note_delta(self, path: str, content_hash: bytes, delta_bytes: int) -> None:
        """Remember that this version of `path` came as a delta of `delta_bytes` (the latest DELTAS_KEPT)."""
        self._deltas.pop((path, content_hash), None)
        self._deltas[(path, content_hash)] = delta_bytes
        if len(self._deltas) > DELTAS_KEPT:
            del self._deltas[next(iter(self._deltas))]

    def delta_bytes(self, path: str, content_hash: bytes) -> int | None:
        """The size of the delta this version of `path` came by, None if unknown (whole, or long ago)."""
        return self._deltas.get((path, content_hash))

    def partial_files(self) -> frozenset[Path]:
        return listed_partial_files(self.root, self.mapping_id, self.manifest)

    def list_partials(self) -> tuple[Partial, ...]:
        """The partials still on disk, each cut to whole chunks (a torn last chunk is resent)."""
        found: list[Partial] = []
        room = PARTIALS_BYTES  # more are not listed: they are sent whole (and their files go at commit)
        for path, digest in self._partials().items():
            size = self._partial_size(self.partial_relpath(path, bytes.fromhex(digest)))
            if size is None:
                continue
            room -= len(path.encode("utf-8", "surrogateescape")) + 32
            if room < 0 or len(found) >= MAX_PARTIALS:
                break
            found.append(Partial(path=path, hash=bytes.fromhex(digest), size=size))
        return tuple(found)

    def _partial_size(self, relpath: str) -> int | None:
        """The size of the partial at `relpath` cut to whole chunks, None unless a regular file
        is there (looked at in its directory held open: nothing outside the folder is stat'ed)."""
        try:
            with parent_held(self.root, relpath) as (parent, name):
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return st.st_size // CHUNK_BYTES * CHUNK_BYTES


def listed_partial_files(root: Path, mapping_id: int, manifest: Manifest) -> frozenset[Path]:
    """The files of the partials the manifest of mapping `mapping_id`, its folder at `root`, lists:
    those a restart's clean-up of the temp files under root keeps (its folder need not be open)."""
    partials = dict(json.loads(manifest.get_meta("partials") or "{}"))
    return frozenset(
        root / staging.partial_name_for(Path(path), bytes.fromhex(digest), mapping_id)
        for path, digest in partials.items()
    )
