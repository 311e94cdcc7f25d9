"""Removal surveys: what a delete, rename or erase takes away from a target's tree, for the purger.

The master's job log does not know every file a target holds (a rename's new path is not kept,
catch-up work has no row, retention prunes rows), so the target, which sees its tree, reports
the kind of the path it removed or moved and the files and links that were under it. A cache
keeps serving any URL it is not told about; a file delete needs no prefix ban.
A symlink to a directory inside the folder is, to a web server, that directory: what lies
under its target is noted under the link's path (the atomic deploy's `current` ->
`releases/6`), for a delete, a rename (also of what the rename replaced at its new path)
and a symlink created or switched (under its old and its new target).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from relaysync._util.fs import walk_in
from relaysync.constants import TEMP_PREFIX
from relaysync.protocol.messages import MAX_REMOVED_BYTES, MAX_REMOVED_PATHS, CommitRecord
from relaysync.transfer.paths import parent_of


def path_bytes(path: str) -> int:
    return len(path.encode("utf-8", "surrogateescape"))


def removed_bytes(record: CommitRecord) -> int:
    """The bytes of a record's removed paths (agent/master_link.py keeps a report under a bound)."""
    return sum(path_bytes(p) for p in record.removed)


class RemovalSurvey:
    """The files and links under the trees an op removes, up to one bound for all of them.

    Args:
        max_paths: paths kept at most; past it (or past `max_bytes`) `truncated` is set.
        max_bytes: bytes of paths kept at most.
    """

    def __init__(
        self,
        *,
        root: Path | None = None,
        max_paths: int = MAX_REMOVED_PATHS,
        max_bytes: int = MAX_REMOVED_BYTES,
    ) -> None:
        self.root = root  # links to directories inside it are walked (once); None: never
        self.max_paths, self.max_bytes = max_paths, max_bytes
        self.paths: list[str] = []
        self._seen: set[str] = set()  # a switched link's old and new targets share names
        self.truncated = False
        self._bytes = 0

    def tree(self, dir_fd: int, name: str, rel: str, *, itself: bool = True) -> str:
        """Note what lies at `name` in the directory `dir_fd` (held open; `rel` in the mapping): a
        directory's files and links (and a link to a directory inside `root`'s, through that
        link only), or a file or link itself (unless not `itself`: the record names it). Return
        its kind ("d" for a link to a directory), "" if nothing is there. Every directory is
        listed through descriptors, none reached through a link: a directory a local user swaps
        for a link to outside the folder is skipped (`truncated`), never listed.
        """
        try:
            mode = os.lstat(name, dir_fd=dir_fd).st_mode
        except FileNotFoundError:
            return ""
        if stat.S_ISDIR(mode):
            self._walk_dir(dir_fd, name, rel)
            return "d"
        if itself:
            self._add(rel)
        if not stat.S_ISLNK(mode):
            return "f"
        return self._link(dir_fd, name, rel)

    def _link(self, dir_fd: int, name: str, rel: str) -> str:
        """A link to a directory is one to the web server: "d", and what is under it when it
        lies inside the folder (walked from root, no link on the way followed)."""
        try:  # followed from the directory held open (fstatat), not by a path through the tree
            if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd).st_mode):
                return "l"
        except (OSError, ValueError):
            return "l"  # dangling, a loop, unreadable: a link to nothing
        if self.root is not None:
            top = _below(self.root, dir_fd, name, rel)
            if top is not None:
                self._walk(self.root, top, rel)
        return "d"

    def record_fields(self, kind: str) -> dict[str, Any]:
        """The `CommitRecord` fields of an op that removed (or moved) a `kind` with these paths."""
        return {"kind": kind, "removed": tuple(self.paths), "removed_truncated": self.truncated}

    def _walk_dir(self, dir_fd: int, name: str, rel: str) -> None:
        """`_walk` of the directory `name` in `dir_fd`, opened there with no link followed."""
        try:
            top = os.open(
                name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
        except OSError:
            self.truncated = True  # swapped for a link or gone since: the master falls back
            return
        try:
            self._walk(top, "", rel)
        finally:
            os.close(top)

    def _walk(self, root: Path | int, top: str, rel: str) -> None:
        """Note the files and links at and below `top` under `root` (a path or a descriptor) as
        under `rel`; a directory that cannot be listed sets `truncated` (the master falls back
        to its job log), one whose name has our temp prefix is passed over."""
        skip = f"/{TEMP_PREFIX}"
        start = len(top) + 1 if top else 0
        for _fd, reldir, entries in walk_in(root, top, on_skip=self._unlisted):
            below = reldir[start:]
            if self.truncated:
                return
            if skip in f"/{below}":
                continue
            prefix = "/".join(p for p in (rel, below) if p)
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) or entry.is_dir(follow_symlinks=False):
                    continue
                if not self._add(f"{prefix}/{entry.name}" if prefix else entry.name):
                    return

    def _unlisted(self, _reldir: str) -> None:
        self.truncated = True

    def _add(self, rel: str) -> bool:
        if rel in self._seen:
            return True
        size = path_bytes(rel)
        if len(self.paths) >= self.max_paths or self._bytes + size > self.max_bytes:
            self.truncated = True
            return False
        self.paths.append(rel)
        self._seen.add(rel)
        self._bytes += size
        return True


def _below(root: Path, dir_fd: int, name: str, rel: str) -> str | None:
    """Where the link `name` in `dir_fd` (at `rel`) leads, relative to `root` ("" for root
    itself); None if outside it or unreadable. Its target (readlink at the descriptor) is joined
    to the link's directory below root and resolved (realpath: lstat and readlink only, nothing
    opened or listed; no /proc needed): it only chooses what to list, and that listing starts
    at root and follows no link."""
    try:
        target = os.readlink(name, dir_fd=dir_fd)
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(os.path.join(root, parent_of(rel), target)))
    except (OSError, ValueError):
        return None
    if not real.is_relative_to(real_root):
        return None
    return "" if real == real_root else real.relative_to(real_root).as_posix()
