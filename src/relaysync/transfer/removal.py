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

from relaysync.constants import TEMP_PREFIX
from relaysync.protocol.messages import MAX_REMOVED_BYTES, MAX_REMOVED_PATHS, CommitRecord


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

    def tree(self, path: Path, rel: str, *, itself: bool = True) -> str:
        """Note what lies at `path` (`rel` in the mapping): a directory's files and links (and
        a link to a directory inside `root`'s, through that link only), or a file or link
        itself (unless not `itself`: the record names it). Return its kind ("d" for a link to
        a directory), "" if nothing is there."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return ""
        if stat.S_ISDIR(mode):
            self._walk(path, rel)
            return "d"
        if itself:
            self._add(rel)
        if not stat.S_ISLNK(mode):
            return "f"
        return self._link(path, rel)

    def _link(self, link: Path, rel: str) -> str:
        """A link to a directory is one to the web server: "d", and what is under it when it
        lies inside the folder (scandir follows the link itself, never one below it)."""
        try:
            real = Path(os.path.realpath(link))
            if not stat.S_ISDIR(os.stat(real).st_mode):
                return "l"
        except (OSError, ValueError):
            return "l"  # dangling, a loop, unreadable: a link to nothing
        if self.root is not None and real.is_relative_to(os.path.realpath(self.root)):
            self._walk(link, rel)
        return "d"

    def record_fields(self, kind: str) -> dict[str, Any]:
        """The `CommitRecord` fields of an op that removed (or moved) a `kind` with these paths."""
        return {"kind": kind, "removed": tuple(self.paths), "removed_truncated": self.truncated}

    def _walk(self, top: Path, rel: str) -> None:
        stack = [(str(top), rel)]
        while stack and not self.truncated:
            directory, prefix = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.name.startswith(TEMP_PREFIX):
                            continue
                        child = f"{prefix}/{entry.name}" if prefix else entry.name
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, child))
                        elif not self._add(child):
                            return
            except OSError:
                self.truncated = True  # unreadable: the master falls back to its job log

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
