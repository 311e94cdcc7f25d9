"""Files a link found gone when it came to send them, followed to where a later rename put them.

A write is journaled when a file is closed; the link reads the file when it sends the record. If
the file was moved meanwhile (a deploy building `release.tmp/` and renaming it into place, an
editor's atomic save, a backlog while a target was down), the write sends nothing, and the later
rename moves on the target only what the target has: an empty directory, or an old version. So
the link remembers such paths for the session (`gone`), and when a rename record moves one of
them, or a directory above one, it sends the file from its new place (`follow`). The same goes for
a path whose file was there but was not the version its record journaled (`unsent`): a rename
of what the target holds there would carry the wrong version to the new name.

Bounded: past MAX_PATHS remembered paths, `overflowed` asks the link for a comparison instead.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_PATHS = 65536


class MovedAway:
    """The paths of one session whose write found no file to send (see the module doc)."""

    def __init__(self, max_paths: int = MAX_PATHS) -> None:
        self._paths: set[str] = set()
        self._max = max_paths
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, path: str) -> bool:
        return path in self._paths

    def gone(self, root: Path, path: str) -> None:
        """`path` was to be sent and was not: remember it if nothing is there any more (a file
        that changed meanwhile is still there, and its newer version has its own record)."""
        if not os.path.lexists(f"{root}/{path}"):
            self.unsent(path)

    def unsent(self, path: str) -> None:
        """The version journaled for `path` was not sent, though a file is there (another
        version: transfer/unreadable.py): remember it, so that a rename of it goes whole."""
        if len(self._paths) >= self._max:
            self.overflowed = True
            return
        self._paths.add(path)

    def forget(self, path: str) -> None:
        """A delete of `path`: nothing at or below it is to be followed any more."""
        self._paths.discard(path)
        if self._paths:
            prefix = path + "/"
            self._paths.difference_update([p for p in self._paths if p.startswith(prefix)])

    def follow(self, path: str, new_path: str) -> list[str]:
        """A rename of `path` to `new_path`: the remembered paths it moved, at their new places
        (forgotten here; whoever sends them calls `gone` again if they moved on meanwhile)."""
        if not self._paths:
            return []
        prefix = path + "/"
        moved = [p for p in self._paths if p == path or p.startswith(prefix)]
        self._paths.difference_update(moved)
        return [new_path + p[len(path) :] for p in moved]
