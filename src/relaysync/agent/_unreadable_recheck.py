"""Source files and directories a scan found there but unreadable: looked at again, with backoff,
until they can be.

A file the agent cannot read (mode 000 and the agent not root, a bad sector, no file descriptor
left) cannot be hashed, so no change of it can be journaled. A directory it cannot list or enter
(mode 000 or 0600, EMFILE, EIO) shows nothing of what is below it. Neither is gone: a scan that
took the file for gone, or the directory for empty, would delete it (and all below it) on every
target. So no change is recorded for them (the manifest and the targets keep the versions they
have), a warning says which path and why, and each is looked at again after
UNREADABLE_RETRY_MIN_S, doubling to UNREADABLE_RETRY_MAX_S, until it is readable or gone: a file
is then restatted, a directory rescanned, and what changed meanwhile journaled, with no new write.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import anyio

from relaysync._util.path_index import PathIndex
from relaysync.constants import UNREADABLE_RETRY_MAX_S, UNREADABLE_RETRY_MIN_S
from relaysync.errors import SourceListError, SourceReadError
from relaysync.transfer.compare import Unreadable
from relaysync.watch.watcher import FsEvent

logger = logging.getLogger(__name__)

WARN_FILES = 20  # unreadable paths named one by one per scan; the others are counted
RecordFn = Callable[[Sequence[FsEvent]], Awaitable[object]]


class UnreadableRecheck:
    """The unreadable files and directories of one source folder (see the module doc)."""

    def __init__(self, root: object, clock: Callable[[], float] = time.monotonic) -> None:
        self._root = root
        self._clock = clock
        # path -> (attempts, when due, a directory to rescan rather than a file to restat)
        self._files: dict[str, tuple[int, float, bool]] = {}
        self._dirs = PathIndex()  # those of them that are directories, for `rescans_for`
        # What `snapshot` made of them, until they change: the links ask for it at every batch
        # (transfer/relay_unreadable.py), and the same object tells them nothing changed.
        self._snapshot: Unreadable | None = None

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def snapshot(self) -> Unreadable:
        """The paths unreadable now, for a comparison to keep on the targets (compare.py)."""
        if self._snapshot is None:
            self._snapshot = self._make_snapshot()
        return self._snapshot

    def _make_snapshot(self) -> Unreadable:
        files = [p for p, (_, _, is_dir) in self._files.items() if not is_dir]
        dirs = [p for p, (_, _, is_dir) in self._files.items() if is_dir]
        return Unreadable(files=frozenset(files), dirs=frozenset(dirs))

    def failed(self, errors: Sequence[SourceReadError]) -> None:
        """These files could not be read to hash, these directories not listed: look at them
        again later. A warning each, up to WARN_FILES per call (out of descriptors, a whole scan
        fails: one line says how many). A path that failed several times in one call (the
        events of many files of one directory) counts once."""
        unique = list({(e.path, isinstance(e, SourceListError)): e for e in errors}.values())
        for i, err in enumerate(unique):
            attempts, _, was_dir = self._files.get(err.path, (0, 0.0, False))
            is_dir = was_dir or isinstance(err, SourceListError)  # a rescan restats it too
            attempts += 1
            wait_s = min(UNREADABLE_RETRY_MIN_S * 2 ** (attempts - 1), UNREADABLE_RETRY_MAX_S)
            if err.path not in self._files or was_dir != is_dir:
                self._snapshot = None
            self._files[err.path] = (attempts, self._clock() + wait_s, is_dir)
            if is_dir:
                self._dirs.add(err.path)
            if i == WARN_FILES:
                logger.warning(
                    "cannot read %s more paths in source %s, will look again: %s",
                    len(unique) - WARN_FILES,
                    self._root,
                    err,
                )
            if i < WARN_FILES:
                self._warn(err, wait_s)

    def _warn(self, err: SourceReadError, wait_s: float) -> None:
        what = "list directory" if isinstance(err, SourceListError) else "read"
        logger.warning(
            "cannot %s %s in source %s (%s), will look again in %.0f s: %s",
            what,
            err.path or "/",
            self._root,
            errno.errorcode.get(err.code or 0, err.code),
            wait_s,
            err,
        )

    def rescans_for(self, events: Sequence[FsEvent]) -> list[FsEvent]:
        """Rescans, at once rather than at their turn, of the unlistable directories at or below
        a path whose attributes `events` say changed: a chmod may have made them listable."""
        changed = {e.path for e in events if e.kind == "attr"} if self._dirs else set()
        found: dict[str, None] = {}  # in order, once each
        for c in sorted(changed):
            found.update(dict.fromkeys(self._dirs.at_or_below(c)))
        return [FsEvent(kind="rescan", path=p, is_dir=True) for p in found]

    async def serve(self, record: RecordFn) -> NoReturn:
        """Look at the paths due again, through `record` (the source's detect and journal)."""
        while True:
            due = [t for _, t, _ in self._files.values()]
            wait_s = min([*due, self._clock() + UNREADABLE_RETRY_MIN_S]) - self._clock()
            await anyio.sleep(max(wait_s, 0.0))
            await self.recheck_once(record)

    async def recheck_once(self, record: RecordFn) -> None:
        """Record the paths due again (a file restatted, a directory rescanned): those read now
        (or gone) are done with; those still not readable are noted again by `failed`, with a
        longer wait."""
        now = self._clock()
        due = {p: is_dir for p, (_, at, is_dir) in self._files.items() if at <= now}
        if not due:
            return
        await record([FsEvent(kind="rescan" if d else "attr", path=p) for p, d in due.items()])
        for path in due:
            if self._files.get(path, (0, now + 1, False))[1] <= now:  # not failed again
                del self._files[path]
                self._dirs.discard(path)
                self._snapshot = None
