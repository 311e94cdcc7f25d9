"""The hot-file hold of SourceMapping: a write a scan finds in a file modified in the last
`hot_file_s` may be of a file still open for writing. Unless told complete (its close-write, or a
read lease: `_util/lease.py closed_as_scanned`), it is held, and journaled by a re-check once it
has stayed untouched; a held file follows renames of itself or of a directory above it.

SourceMapping (agent/source.py) inherits it and owns the state: `_held` (path -> re-checks that
found it gone), `hot_file_s`, `root`, `_record_lock`, set in its __init__.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from relaysync._util.fs import root_held
from relaysync._util.lease import ScannedFile, closed_as_scanned, probe_lease
from relaysync.watch.changes import PendingChange
from relaysync.watch.watcher import FsEvent

from ._delete_runs import Mode

HELD_GONE_RECHECKS = 4  # a held file found gone is looked for this many re-checks more (moved?)
# A file changed with no close-write is held while a process has it open for writing (a writer
# that paused mid-file), but no longer than this: a log written through a descriptor kept open
# for ever goes then, as it is, as one that was never quiet goes once it cools (`_hot_writes`).
OPEN_WRITER_HOLD_MAX_S = 30.0


class HotFileHold:
    """The hot-file hold of SourceMapping (a mixin: SourceMapping.__init__ sets its state)."""

    root: Path
    hot_file_s: float
    _held: dict[str, int]
    _held_open: dict[str, float]
    _record_lock: anyio.Lock

    if TYPE_CHECKING:  # SourceMapping's

        async def _record_locked(
            self, events: Sequence[FsEvent], *, mode: Mode = "now"
        ) -> None: ...

    async def _recheck_held(self) -> None:
        while True:
            await anyio.sleep(self.hot_file_s / 2)
            await self.recheck_held_once()

    async def recheck_held_once(self) -> None:
        """Record the held files that cooled down (the others are held again)."""
        if not self._held:
            return
        async with self._record_lock:
            held, self._held = self._held, {}
            held_open = dict(self._held_open)
            # one held open for writing is asked again whether it still is ("modify")
            await self._record_locked(
                [FsEvent(kind="modify" if p in self._held_open else "attr", path=p) for p in held]
            )
            # A path gone may have moved with its directory, whose rename event is still on
            # its way (then `_follow_held` carries it): held for a few more re-checks.
            gone = await anyio.to_thread.run_sync(
                self._gone, [p for p, n in held.items() if n < HELD_GONE_RECHECKS]
            )
            for path in gone:
                self._held.setdefault(path, held[path] + 1)
                if path in held_open:  # still held open for writing, wherever it went
                    self._held_open.setdefault(path, held_open[path])

    def _gone(self, paths: list[str]) -> list[str]:
        return [p for p in paths if not os.path.lexists(self.root / p)]

    async def _hold_hot(
        self, changes: list[PendingChange], closed: set[str], unclosed: set[str]
    ) -> list[PendingChange]:
        """Keep back writes found by a scan of files modified in the last `hot_file_s` that may
        still be being written.

        A scan (initial, after an overflow, of a new directory) cannot tell a file that is
        complete from one still being written; inotify's close-write can, and for a file written
        into a new directory before its watch was added (`mkdir d; cp f d/`: no close-write
        comes for it) so can a read lease (`closed_as_scanned`: not empty, open for writing by no
        process, still the file the scan saw). A held file is shipped on its close-write, or by
        the re-check once it has stayed untouched.

        A write of a path in `unclosed` (changed with no close-write: the watcher's "modify",
        sent once the file was quiet for a while) is held, however old its mtime, while a
        process has it open for writing (`probe_lease`): a writer that paused mid-file, whose
        half would otherwise be committed on the targets. For OPEN_WRITER_HOLD_MAX_S at most.
        So is a write found with no close-write whose mtime is within OPEN_WRITER_HOLD_MAX_S,
        whatever found it (`_maybe_writing`): a rescan may find the paused writer's file before
        its "modify" comes, or when none will.
        """
        now = time.monotonic()
        # one held open for writing is asked again whatever found it (a rescan of the directory
        # it was renamed with finds it with no "modify"), until it was held that long
        expired = {p for p, t in self._held_open.items() if now - t >= OPEN_WRITER_HOLD_MAX_S}
        unclosed = (unclosed | self._held_open.keys()) - closed - expired
        # The other hard links of a file closed after writing (the recorder restats them) are
        # that same file: closed too.
        closed_inodes = {c.entry.ino for c in changes if c.path in closed and c.entry is not None}
        closed_inodes.discard(0)
        hot = self._hot_writes(changes, closed, closed_inodes)
        writing = self._maybe_writing(changes, closed | expired, closed_inodes, unclosed) - hot
        held: set[int] = set()
        if hot or writing:
            held = await anyio.to_thread.run_sync(self._still_hot, changes, hot, writing)
        for i in held:
            self._held[changes[i].path] = 0
            if changes[i].path in unclosed or i in writing:
                self._held_open.setdefault(changes[i].path, now)
        self._held_open = {p: t for p, t in self._held_open.items() if p in self._held}
        return [change for i, change in enumerate(changes) if i not in held]

    def _hot_writes(
        self, changes: list[PendingChange], closed: set[str], closed_inodes: set[int]
    ) -> set[int]:
        """The indexes of the writes of files not closed after writing, modified lately."""
        now_ns = time.time_ns()
        # a future mtime (a copy from a host whose clock is ahead) is not "being written now"
        return {
            i
            for i, change in enumerate(changes)
            if change.op == "write"
            and change.path not in closed
            and change.entry is not None
            and change.entry.ino not in closed_inodes
            and 0 <= now_ns - change.entry.mtime_ns < self.hot_file_s * 1e9
        }

    @staticmethod
    def _maybe_writing(
        changes: list[PendingChange], closed: set[str], closed_inodes: set[int], unclosed: set[str]
    ) -> set[int]:
        """The indexes of the writes a process may still have open for writing, to be asked
        (`probe_lease`): of a path in `unclosed`, and of a file not closed after writing whose
        mtime is within OPEN_WRITER_HOLD_MAX_S. The latter are what a scan finds of a writer
        paused longer than `hot_file_s` with no "modify" for it in the batch: not reported yet
        (the watcher waits MODIFY_QUIET_S), lost to an overflow, or written before the agent
        started; and a hot file held earlier, re-checked once it cooled. A burst of writes costs
        nothing more: their close-writes put them in `closed`."""
        now_ns = time.time_ns()
        return {
            i
            for i, change in enumerate(changes)
            if change.op == "write"
            and change.path not in closed
            and (
                change.path in unclosed
                or (
                    change.entry is not None
                    and change.entry.ino not in closed_inodes
                    and 0 <= now_ns - change.entry.mtime_ns < OPEN_WRITER_HOLD_MAX_S * 1e9
                )
            )
        }

    def _still_hot(
        self, changes: list[PendingChange], hot: set[int], writing: set[int]
    ) -> set[int]:
        """Those of `hot` not told complete by `closed_as_scanned`, and those of `writing` some
        process has open for writing (a worker thread's part). The root is opened once for the
        batch (`root_held`), not once per file."""
        with root_held(self.root):
            held = {i for i in hot if not self._complete(changes[i])}
            return held | {i for i in writing if probe_lease(self.root, changes[i].path).writing}

    def _complete(self, change: PendingChange) -> bool:
        entry = change.entry
        assert entry is not None  # `_hot_writes` takes only writes with an entry
        return closed_as_scanned(
            self.root,
            change.path,
            ScannedFile(entry.ino, entry.size, entry.mtime_ns, entry.ctime_ns),
        )

    def _follow_held(self, changes: list[PendingChange]) -> None:
        """A held file moves with a rename of itself or of a directory above it (a deploy renames
        `release.tmp/` into place before its files cool down), and is let go with a delete: its
        re-check must look where it is now, or the file is never journaled. One held while a
        process has it open for writing stays so under its new name, since it was first held
        (OPEN_WRITER_HOLD_MAX_S counts from then)."""
        for change in changes:
            if not self._held:
                return
            if change.op not in ("rename", "delete"):
                continue
            prefix = change.path + "/"
            under = [p for p in self._held if p == change.path or p.startswith(prefix)]
            for path in under:
                del self._held[path]
                since = self._held_open.pop(path, None)
                if change.op == "rename":
                    moved = change.new_path + path[len(change.path) :]
                    self._held[moved] = 0
                    if since is not None:
                        self._held_open[moved] = since
