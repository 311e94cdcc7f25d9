"""The watched root folder's presence: lost (deleted, moved away, unmounted) and back again."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["RootPresence"]

Identity = tuple[int, int]  # (st_dev, st_ino) of a directory


def _identity(path: Path) -> Identity | None:
    """The directory at `path` (links followed, as the watch does), or None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


class RootPresence:
    """Whether the root folder a Watcher watches is there, and when it is back once lost.

    Deleted or moved away, any directory later found at its path is the folder back (made
    again, moved back). Unmounted, its path shows the mount point's own directory (empty, most
    often), which is not the folder: only another directory there (a file system mounted
    again, the mount point replaced) is.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self.lost = False
        self._watched: Identity | None = None  # the directory the root's watch is on
        self._gone: Identity | None = None  # what the path showed when the root was lost

    def watched(self) -> None:
        """The root's watch was added: remember which directory it is on."""
        self._watched = _identity(self._root)

    def moved_off(self) -> bool:
        """Whether the root's path no longer shows the directory watched (its file system was
        unmounted, not one mounted below it)."""
        return _identity(self._root) != self._watched

    def lose(self, *, unmounted: bool) -> bool:
        """Mark the root lost; return False if it already was."""
        if self.lost:
            return False
        self.lost = True
        # A path that is a mount point again already (unmounted and mounted at once) is back.
        unmounted = unmounted and not os.path.ismount(self._root)
        self._gone = _identity(self._root) if unmounted else None
        return True

    def back(self) -> bool:
        """Whether the lost root is back (and so no longer lost)."""
        if not self.lost:
            return False
        now = _identity(self._root)
        if now is None or now == self._gone:
            return False
        self.lost = False
        return True
