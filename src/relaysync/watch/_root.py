"""The watched root folder: lost (deleted, moved away, unmounted) and back again, or replaced at
its path (a symlink switched, a file system mounted over it). `RootPresence` tells which from
the path; `RootWatching` is the Watcher's part that acts on it."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc
from asyncinotify import Mask

from relaysync.watch._fsevent import EventKind, FsEvent

__all__ = ["RootPresence", "RootWatching", "mount_of", "mount_table"]

logger = logging.getLogger(__name__)

ROOT_POLL_S = 0.5  # how often a lost root folder is looked for again, or a replaced one
ROOT_STAT_TIMEOUT_S = 5.0  # a root not answering a stat in this time is taken as hung

Identity = tuple[int, int]  # (st_dev, st_ino) of a directory
Mount = tuple[str, str]  # (mount ID, mount point) of a line of /proc/self/mountinfo
Change = Literal["", "replaced", "unmounted", "gone", "back"]
MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(rb"\\([0-7]{3})")


def mount_table(mountinfo: str = MOUNTINFO) -> dict[Mount, str]:
    """Every mount, bind mounts included (`os.path.ismount` misses a bind mount of a directory
    of the same file system), with its parent's mount ID; empty if the table cannot be read."""
    try:
        with open(mountinfo, "rb") as table:
            lines = table.read().split(b"\n")  # not splitlines(): a mount point may hold a \r
    except OSError:
        return {}
    mounts: dict[Mount, str] = {}
    for fields in (line.split(b" ") for line in lines):
        if len(fields) > 4:  # mount ID, parent's ID, device, root, mount point, ...
            # the mount point has space, tab, newline and backslash as octal escapes
            point = _OCTAL.sub(lambda m: bytes([int(m[1], 8)]), fields[4])
            mounts[(os.fsdecode(fields[0]), os.fsdecode(point))] = os.fsdecode(fields[1])
    return mounts


def mount_of(path: str, table: dict[Mount, str]) -> Mount | None:
    """The mount `path` (an absolute path, links resolved) is on: of those at the longest mount
    point above it, the one on top (no other there is mounted on it); None if none is."""
    above = [m for m in table if m[1] == "/" or path == m[1] or path.startswith(m[1] + "/")]
    if not above:
        return None
    point = max((m[1] for m in above), key=len)
    stacked = [m for m in above if m[1] == point]
    parents = {table[m] for m in stacked}
    return next((m for m in stacked if m[0] not in parents), stacked[-1])


def _probe(path: Path) -> None:
    """Stat `path`, whatever the answer (only whether it comes matters)."""
    try:
        os.stat(path)
    except OSError:
        pass


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
        self._real = ""  # the root's path, links resolved, then
        self._mount: Mount | None = None  # the mount that directory is on
        self._gone: Identity | None = None  # what the path showed when the root was lost
        self.changes = 0  # how often `poll` found the root lost, back or replaced

    def watched(self) -> None:
        """The root's watch is about to be added, or tried: remember which directory it will be
        on (taken before the watch, a link switched in between is seen switched at the next
        look, never missed). A root gone meanwhile keeps the one before: the next look finds
        it gone."""
        self._watched = _identity(self._root) or self._watched
        self._real = os.path.realpath(self._root)
        self._mount = mount_of(self._real, mount_table())

    def poll(self) -> Change:
        """What became of the root since the last look: "back" once lost and back again, else
        what `changed` says."""
        change: Change = "back" if self.back() else self.changed()
        if change:
            self.changes += 1
        return change

    def changed(self) -> Change:
        """How the root's path differs from the directory watched, if it is not lost.

        "" if it shows that directory; "gone" if it shows none (deleted, moved, a symlink
        removed, which no watch tells); "unmounted" if the mount that directory was on went,
        at the root or above it, and what was below shows (a bind mount, or a file system
        unmounted without IN_UNMOUNT, which the kernel sends only when the file system itself
        goes); "replaced" if another directory is there (a symlink switched to another
        release, a file system mounted over it).
        """
        now = _identity(self._root)
        if self.lost or now == self._watched:
            return ""
        if self._watched is None:  # none there when it was to be watched; one is now
            return "replaced"
        if now is None:  # its DELETE_SELF may be on its way; a symlink's removal sends none
            return "gone"
        if (
            self._mount is not None
            and os.path.realpath(self._root) == self._real  # not a symlink switched
            and self._mount not in mount_table()
        ):
            return "unmounted"
        return "replaced"

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


class RootWatching:
    """The root's part of the Watcher (a mixin: the Watcher sets this state and owns the
    watches): the root lost, back, or replaced at its path."""

    _root: Path
    _presence: RootPresence
    _root_hung = False
    _probe_pending = False  # a probe's thread has not returned yet (`_probe_root`)
    _probe_done: anyio.Event | None = None  # set once the probe a look waits for answered
    _tables: anyio.Lock  # held while the watch tables are touched (the Watcher's)

    if TYPE_CHECKING:  # the Watcher's

        def _queue_tree(self, top: str) -> None: ...

        async def _watch_queued(self) -> None: ...

        def _forget_tree(self, top: str, *, remove: bool) -> None: ...

        def _emit(
            self, kind: EventKind, path: str, *, is_dir: bool = False, new_path: str = ""
        ) -> None: ...

    @property
    def root_lost(self) -> bool:
        """Whether the root folder is gone (deleted, moved away, unmounted) and not back yet."""
        return self._presence.lost

    def _self_event(self, base: str, mask: Mask) -> None:
        if base == "" and mask & (Mask.DELETE_SELF | Mask.MOVE_SELF):
            self._lose_root(unmounted=False)

    def _unmounted(self, base: str) -> None:
        """IN_UNMOUNT: the file system of the watch on `base` went (every watch on it is
        IN_IGNORED next), the root's or one mounted below it, which shows its mount point now."""
        if not base or self._presence.moved_off():
            self._lose_root(unmounted=True)
        else:
            self._queue_tree(base)
            self._emit("rescan", base, is_dir=True)

    def _lose_root(self, *, unmounted: bool) -> None:
        """The root is gone: forget its watches (a moved root's would report what happens to
        it elsewhere) and rescan, which finds it empty or missing (the source's mass-delete
        guard holds that); `_watch_root_return` watches it again once it is back."""
        if self._forget_root(unmounted=unmounted):
            self._emit("rescan", "", is_dir=True)

    def _forget_root(self, *, unmounted: bool) -> bool:
        """Mark the root lost and forget its watches; False if it already was lost."""
        if not self._presence.lose(unmounted=unmounted):
            return False
        logger.warning(
            "watched root %s was %s; rescanning, and watching again once it is back",
            self._root,
            "unmounted" if unmounted else "deleted or moved (an unmounted disk?)",
        )
        self._forget_tree("", remove=True)
        return True

    def _check_root(self) -> bool:
        """Act on what the root's path shows now (`RootPresence.poll`): watch it again, back or
        replaced, or forget it, lost. True if so: a rescan of "" is due, and what was read from
        its watches before is stale (it tells of a directory no longer at the root's path)."""
        change = self._presence.poll()
        if change in ("replaced", "back"):
            logger.warning("watched root %s is %s: rescanning it", self._root, change)
            self._forget_tree("", remove=True)
            # `_add_watch` records the directory (`RootPresence.watched`) before it adds the
            # watch, also where none can be added (no read permission, the watch limit, which
            # `_scan_unwatched` retries): it is not "replaced" again at every look. The caller
            # has the tree watched (`_watch_queued`) before the rescan goes out.
            self._queue_tree("")
            return True
        return change in ("unmounted", "gone") and self._forget_root(
            unmounted=change == "unmounted"
        )

    async def _root_answers(self) -> bool:
        """Whether the root's path answers a stat within ROOT_STAT_TIMEOUT_S, asked from a worker
        thread. On a hung network mount (an NFS hard mount, FUSE) the stats of `_check_root`
        would freeze the event loop, and with it the agent's control link and its other
        mappings: the root is only checked once it answers."""
        answered = False
        with anyio.move_on_after(ROOT_STAT_TIMEOUT_S):
            answered = await self._probe_root()
        if answered and self._root_hung:
            self._root_hung = False
            logger.warning("watched root %s answers again", self._root)
        elif not answered and not self._root_hung:
            self._root_hung = True
            logger.warning(
                "watched root %s does not answer (a hung network mount?); its changes wait "
                "until it does, the agent's other work goes on",
                self._root,
            )
        return answered

    async def _probe_root(self) -> bool:
        """Probe the root's path from a worker thread; True once it answered. One probe at a
        time: a look made while another look's probe is on its way waits for that one's
        answer (the read loop's and the poll's meet); while a probe given up on (hung) has not
        returned, False at once and no other thread is started."""
        if self._probe_pending:
            if self._probe_done is None:
                return False
            await self._probe_done.wait()
            return True
        self._probe_pending = True
        self._probe_done = done = anyio.Event()

        def probe() -> None:
            try:
                _probe(self._root)
            finally:
                self._probe_pending = False

        try:
            await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
        finally:
            self._probe_done = None  # given up on (cancelled), its waiters time out
        done.set()
        return True

    async def _watch_root_return(self, send: anyio.abc.ObjectSendStream[list[FsEvent]]) -> None:
        """Watch the root again, and rescan it, once it is back (remounted, made again) or
        replaced at its path, which no inotify event tells (a symlink switched to another
        release, a file system mounted over it). A root whose bind mount went, or whose path
        shows nothing (a symlink removed), is lost as if unmounted or deleted
        (`RootPresence.poll`). The read loop checks too, after each batch (`_check_root`)."""
        while True:
            await anyio.sleep(ROOT_POLL_S)
            if not await self._root_answers():
                continue
            async with self._tables:
                changed = self._check_root()
                await self._watch_queued()  # the tree back or replaced, in a worker thread
            if changed:
                await send.send([FsEvent(kind="rescan", path="", is_dir=True)])
