"""The watches of a watched tree: which directory each inotify watch descriptor is on, the
directories beyond the kernel's watch limit, those the agent may not read (retried) and those
gone before their watch was added; the subtrees are listed and watched in a worker thread,
never on the event loop."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from asyncinotify import Inotify, Mask, Watch

from relaysync._util.fs import GONE_ERRNOS, parent_held
from relaysync._util.path_index import PathIndex
from relaysync.errors import WatchLimitReached
from relaysync.watch._root import RootPresence
from relaysync.watch.filters import PathFilter
from relaysync.watch.scanner import join

__all__ = ["MAX_VANISHED", "TreeWatches", "WARN_UNREADABLE", "under"]

logger = logging.getLogger("relaysync.watch.watcher")  # the Watcher's part: its logger

MAX_VANISHED = 4096  # vanished directories remembered until their DELETE or MOVED_FROM is read
WARN_UNREADABLE = 20  # directories that cannot be watched named one by one; then one line more
_MASK = (
    Mask.CLOSE_WRITE
    | Mask.MODIFY
    | Mask.CREATE
    | Mask.DELETE
    | Mask.DELETE_SELF
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.MOVE_SELF
    | Mask.ATTRIB
    | Mask.ONLYDIR
    | Mask.DONT_FOLLOW
)
_ROOT_MASK = _MASK & ~Mask.DONT_FOLLOW
_PROC_FD = "/proc/self/fd"
_T = TypeVar("_T")


def _subdir_names(path: Path) -> list[str]:
    with os.scandir(path) as it:
        return [de.name for de in it if de.is_dir(follow_symlinks=False)]


def under(path: str, top: str) -> bool:
    """Whether `path` is `top` or below it ("" is the root, above every path)."""
    return not top or path == top or path.startswith(top + "/")


class TreeWatches:
    """The Watcher's watch tables (a mixin: the Watcher reads them as it handles events).

    A worker thread lists and watches subtrees (`_watch_queued`) while the event loop goes on:
    the tables are touched only under `_tables`, which the thread's caller holds, and so does
    every task of the Watcher that touches them meanwhile.
    """

    _presence: RootPresence  # the Watcher's: the root's directory is recorded as it is watched

    def __init__(self, root: Path, path_filter: PathFilter, interval_s: float) -> None:
        self._root = root
        self._filter = path_filter
        self._interval_s = interval_s
        self._ino: Inotify | None = None
        self._paths: dict[int, str] = {}  # watch descriptor -> relative directory
        self._wds: dict[str, int] = {}
        self._watches: dict[int, Watch] = {}
        self._unwatched: dict[str, None] = {}  # ordered set of directories beyond the watch limit
        # Directories that could not be watched or listed though they are there (EACCES: mode
        # 000, or below one of mode 0600; EMFILE, EIO): tried again on their ATTRIB and every
        # interval_s, and rescanned once watched (what changed in them meanwhile was not seen).
        self._unreadable = PathIndex()
        # Directories whose watch failed because they were gone (ENOENT): deleted, or renamed
        # before their CREATE was read; the DELETE or MOVED_FROM that says which is still queued.
        self._vanished: dict[str, None] = {}
        # Watches (-> their labels) of directories a paired move in this batch put another one
        # in the place of: alive elsewhere if the move was half of an exchange (`mv --exchange
        # a b`, whose second half, b's MOVED_FROM, takes them), removed at the batch's end if not.
        self._parked: dict[int, str] = {}
        self._limit_warned = False
        self._too_long_warned = False
        # Subtrees to list and watch (a new directory, an overflow's whole tree), in the order
        # asked: `_watch_queued` does it in a worker thread, before an event that reads the
        # tables is handled and before the batch goes out.
        self._to_watch: dict[str, None] = {}
        # Held while a worker thread lists and watches, and by whatever touches the tables
        # (`_paths`, `_wds`, `_watches`, `_unwatched`, `_vanished`, the root's presence)
        # meanwhile: the read loop for a whole batch, `_scan_unwatched`, `_watch_root_return`.
        self._tables = anyio.Lock()

    def _queue_tree(self, top: str) -> None:
        """Have `top` and the directories below it watched before an event that reads the
        tables is handled, and before the batch goes out (`_watch_queued`)."""
        self._to_watch[top] = None

    async def _watch_queued(self) -> None:
        """List and watch the queued subtrees in a worker thread; the caller holds `_tables`.

        A tree of many directories takes seconds to list and watch (an overflow's whole tree, a
        big directory moved in), and a directory on a hung network mount never answers: the
        event loop, which every link and the control link of the agent share, must not wait on
        either. A stop abandons the thread, which ends at its next directory.
        """
        if not self._to_watch:
            return
        tops = list(self._to_watch)
        self._to_watch.clear()
        await anyio.to_thread.run_sync(self._add_trees, tops, abandon_on_cancel=True)

    def _add_trees(self, tops: list[str]) -> None:
        """Watch each of `tops` and what is below it (in a worker thread: see `_watch_queued`)."""
        for top in tops:
            self._add_tree(top)

    def _add_tree(self, top: str) -> None:
        stack = [top]
        while stack and self._ino is not None:  # None: stopped (an abandoned listing)
            rel = stack.pop()
            # the watch first, then the listing: a child made in between is seen by either
            if self._add_watch(rel):
                stack.extend(self._subdirs(rel))

    def _subdirs(self, rel: str) -> list[str]:
        out = []
        try:
            for name in self._at_short_path(rel, _subdir_names):
                child = join(rel, name)
                if self._filter.accepts(child, is_dir=True):
                    out.append(child)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                self._note_vanished(rel)  # its subdirectories are unwatched, wherever it went
                self._unreadable.discard(rel)
            elif exc.errno not in GONE_ERRNOS:
                self._note_unreadable(rel, exc)  # watched, but its subdirectories are not
            logger.debug("cannot list %s", rel)
            return out
        self._unreadable.discard(rel)  # watched and listed: readable now
        return out

    def _add_watch(self, rel: str) -> bool:
        ino = self._ino
        if ino is None:  # stopped while an abandoned listing went on
            return False
        if not rel:  # first: a link switched after the watch is added is then seen switched
            self._presence.watched()
        try:
            # The root itself may be a symlink (`current` -> a release): it is followed, as a
            # scan follows it; links below it are entries, never watched through.
            mask = _MASK if rel else _ROOT_MASK
            watch = self._at_short_path(rel, lambda path: ino.add_watch(path, mask))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._note_unwatched(rel)
            elif exc.errno == errno.ENAMETOOLONG:
                self._note_too_long(rel)
            elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
                self._note_vanished(rel)
                self._unreadable.discard(rel)
            elif exc.errno != errno.ELOOP:
                self._note_unreadable(rel, exc)
            return False
        self._watches[watch.wd] = watch
        self._label(rel, watch.wd)
        self._unwatched.pop(rel, None)
        return True

    def _label(self, rel: str, wd: int) -> None:
        """Record that watch `wd` is on the directory at `rel` now (the kernel said so: it
        returned `wd` for that path, or a move took it there).

        A watch labelled `rel` before is on a directory no longer there (moved out, replaced):
        it is removed, or what happens to that directory elsewhere would be reported under
        `rel` (an archived release's `rm -rf` as deletes of the live files). A label `wd` had
        before is stale the same way. So `_paths` and `_wds` stay each other's inverse.
        """
        old = self._paths.get(wd)
        if old is not None and old != rel and self._wds.get(old) == wd:
            del self._wds[old]
        displaced = self._wds.get(rel)
        if displaced is not None and displaced != wd:
            self._remove_watch(displaced)
        self._paths[wd] = rel
        self._wds[rel] = wd

    def _remove_watch(self, wd: int) -> None:
        """Forget watch `wd` and remove it from the kernel (its IN_IGNORED then finds nothing)."""
        rel = self._paths.pop(wd, None)
        if rel is not None and self._wds.get(rel) == wd:
            del self._wds[rel]
        watch = self._watches.pop(wd, None)
        if watch is None or self._ino is None:
            return
        try:
            self._ino.rm_watch(watch)
        except OSError:
            logger.debug("watch of %s was already gone", rel)

    def _note_unwatched(self, rel: str) -> None:
        if any(under(rel, u) for u in self._unwatched):
            return
        self._unwatched[rel] = None
        if not self._limit_warned:
            self._limit_warned = True
            logger.warning("%s", WatchLimitReached(rel or "/", len(self._wds), self._interval_s))

    def _at_short_path(self, rel: str, call: Callable[[Path], _T]) -> _T:
        """`call(root/rel)`; for a `rel` whose absolute path exceeds PATH_MAX (ENAMETOOLONG),
        though `rel` itself does not (a deep tree under a long root), `call` of a short path to
        it: /proc/self/fd/N/name, N a descriptor of its parent held open meanwhile.

        Raises:
            OSError: from `call`, or the parent cannot be opened (gone: ENOENT, ENOTDIR); the
                first ENAMETOOLONG if there is no /proc to go through.
        """
        try:
            return call(self._root / rel)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG or not rel or not os.path.isdir(_PROC_FD):
                raise
        with parent_held(self._root, rel) as (parent, name):
            return call(Path(_PROC_FD, str(parent), name))

    def _is_dir(self, rel: str) -> bool:
        """Whether a directory (not a link to one) is at `rel` now."""
        try:
            return stat.S_ISDIR(self._at_short_path(rel, os.lstat).st_mode)
        except OSError:
            return False

    def _note_too_long(self, rel: str) -> None:
        """`rel`'s absolute path exceeds PATH_MAX and there is no /proc to watch it through
        (`_at_short_path`): rescanned every interval, as a directory beyond the watch limit."""
        if any(under(rel, u) for u in self._unwatched):
            return
        self._unwatched[rel] = None
        if not self._too_long_warned:
            self._too_long_warned = True
            logger.warning(
                "cannot watch directory %s in source %s: its absolute path is longer than "
                "PATH_MAX and /proc is not mounted to reach it by a shorter one; it and the "
                "directories below it are rescanned every %.0f s instead",
                rel,
                self._root,
                self._interval_s,
            )

    def _note_unreadable(self, rel: str, exc: OSError) -> None:
        """`rel` is there but could not be watched or listed: it is tried again (see
        `_unreadable`). A warning each while no more than WARN_UNREADABLE are, not per retry."""
        if rel in self._unreadable:
            return
        self._unreadable.add(rel)
        if len(self._unreadable) <= WARN_UNREADABLE:
            logger.warning(
                "cannot watch directory %s in source %s (%s: %s): changes in it are found once "
                "it can be read (fix its permissions: the agent's user must be able to read and "
                "enter it); tried again every %.0f s",
                rel or "/",
                self._root,
                errno.errorcode.get(exc.errno or 0, exc.errno),
                exc.strerror or exc,
                self._interval_s,
            )
        elif len(self._unreadable) == WARN_UNREADABLE + 1:
            logger.warning("more directories in source %s cannot be watched", self._root)

    def _retry_unreadable(self, top: str) -> list[str]:
        """Have the unreadable directories at or below `top` watched again (`_watch_queued`);
        return them."""
        tops = self._unreadable.at_or_below(top)
        for rel in tops:
            self._queue_tree(rel)
        return tops

    def _note_vanished(self, rel: str) -> None:
        if rel:
            self._vanished[rel] = None
            if len(self._vanished) > MAX_VANISHED:
                del self._vanished[next(iter(self._vanished))]

    def _drop_vanished(self, top: str) -> None:
        for rel in [p for p in self._vanished if under(p, top)]:
            del self._vanished[rel]

    def _forget_tree(self, top: str, *, remove: bool) -> None:
        """Forget every watch labelled at or below `top` (and remove it from the kernel)."""
        for wd in [wd for wd, rel in self._paths.items() if under(rel, top)]:
            if remove:
                self._remove_watch(wd)
            else:
                self._drop_label(wd)
        self._remove_parked(top)
        self._forget_paths(top)

    def _drop_label(self, wd: int) -> None:
        rel = self._paths.pop(wd, None)
        if rel is not None and self._wds.get(rel) == wd:
            del self._wds[rel]

    def _forget_paths(self, top: str) -> None:
        """Forget the directories at or below `top` that have no watch (vanished, beyond the
        limit, unreadable)."""
        self._drop_vanished(top)
        for rel in [p for p in self._unwatched if under(p, top)]:
            del self._unwatched[rel]
        for rel in self._unreadable.at_or_below(top):
            self._unreadable.discard(rel)

    def _tree_wds(self, top: str) -> set[int]:
        """The watches labelled at or below `top` now."""
        return {wd for wd, rel in self._paths.items() if under(rel, top)}

    def _move_tree(self, old: str, new: str, wds: set[int]) -> None:
        """Relabel from `old` to `new` the watches `wds` (those that were below `old` when its
        MOVED_FROM was read, or parked: `_park`) and the unwatched directories below `old`."""
        moved = [(wd, rel) for wd in wds if (rel := self._label_of(wd)) is not None]
        moved = [(wd, new + rel[len(old) :]) for wd, rel in moved if under(rel, old)]
        if moved:
            self._park(new, {wd for wd, _ in moved})
        for wd, _ in moved:  # first all, so that none displaces another of the moved tree
            self._drop_label(wd)
        for wd, rel in moved:
            self._label(rel, wd)
        for rel in [p for p in self._unwatched if under(p, old)]:
            del self._unwatched[rel]
            self._unwatched[new + rel[len(old) :]] = None
        for rel in self._unreadable.at_or_below(old):
            self._unreadable.discard(rel)
            self._unreadable.add(new + rel[len(old) :])

    def _label_of(self, wd: int) -> str | None:
        """The label of watch `wd`, or the one it had when parked (then no longer parked)."""
        rel = self._paths.get(wd)
        return rel if rel is not None else self._parked.pop(wd, None)

    def _park(self, top: str, keep: set[int]) -> None:
        """Unlabel, but keep in the kernel, the watches at or below `top` but `keep`: a move put
        another directory at `top`, and the one there before may be alive elsewhere (an
        exchange) as well as gone (an empty directory renamed over: its IN_IGNORED follows)."""
        for wd in [wd for wd, rel in self._paths.items() if under(rel, top) and wd not in keep]:
            self._parked[wd] = self._paths[wd]
            self._drop_label(wd)

    def _parked_below(self, top: str) -> set[int]:
        return {wd for wd, rel in self._parked.items() if under(rel, top)}

    def _remove_parked(self, top: str = "") -> None:
        """Remove the parked watches at or below `top` (all: at the batch's end)."""
        for wd in self._parked_below(top):
            del self._parked[wd]
            self._remove_watch(wd)

    def _unwatch_moved_out(self, top: str, wds: set[int]) -> list[str]:
        """Remove the watches `wds` that went out of the tree with the directory `top` (those
        of it and below it when its MOVED_FROM was read); return the directories to rescan.

        A directory at `top` again by now (`mv site /archive/x; mkdir site`, or moved back in)
        is asked of the kernel, each of those labels: a watch it gives for the path now is kept
        (the same directory moved back; one watched by path after the move, before its
        MOVED_FROM was read). The new directories themselves were watched as their own events
        came (CREATE, MOVED_TO), which displaced the old watches of the same labels (`_label`).
        """
        replaced = self._is_dir(top)
        rescans: list[str] = []
        for wd in wds:
            rel = self._paths.get(wd)
            if rel is None or not under(rel, top):  # gone, or the kernel put it elsewhere since
                continue
            if not (replaced and self._watched_at(rel, wd, rescans)):
                self._remove_watch(wd)
        if not replaced:
            self._forget_paths(top)
        else:
            self._drop_vanished(top)
        return rescans

    def _watched_at(self, rel: str, wd: int, rescans: list[str]) -> bool:
        """Whether the kernel gives watch `wd` for the directory at `rel` now. If it gives one
        of another directory, unknown or known by another label, that directory is watched anew
        and rescanned (`rescans`)."""
        kernel_wd = self._kernel_wd(rel)
        if kernel_wd is None:
            return False
        if kernel_wd == wd:
            return True
        if self._paths.get(kernel_wd) != rel:
            self._queue_tree(rel)
            rescans.append(rel)
        return False

    def _kernel_wd(self, rel: str) -> int | None:
        """The watch the kernel has (or adds) on the directory at `rel` now: inotify gives the
        same descriptor for the same inode. None if no directory is there."""
        ino = self._ino
        if ino is None:
            return None
        try:
            return self._at_short_path(rel, lambda path: ino.add_watch(path, _MASK)).wd
        except OSError:
            return None
