"""The periodic rescan of SourceMapping: the whole folder every `rescan_interval_s`, a safety
net under the watcher (what it finds is logged as a warning: a watcher that misses changes is
worth knowing about).

SourceMapping (agent/source.py) inherits it and owns the state: `rescan_interval_s`, `root`,
`journal`, `_record_lock`, set in its __init__; `_guard_held` is the mass-delete guard's.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from relaysync.watch.journal import Journal
from relaysync.watch.watcher import FsEvent

from ._delete_runs import Mode

logger = logging.getLogger("relaysync.agent.source")  # its warning, as before the split

RESCAN_JITTER = 0.1  # ... give or take this share, so that many mappings do not rescan at once


class PeriodicRescan:
    """The periodic rescan of SourceMapping (a mixin: SourceMapping.__init__ sets its state)."""

    root: Path
    rescan_interval_s: float
    journal: Journal
    _record_lock: anyio.Lock
    _guard_held: bool

    if TYPE_CHECKING:  # SourceMapping's

        async def _record_locked(
            self, events: Sequence[FsEvent], *, mode: Mode = "now"
        ) -> None: ...

    async def _rescan_periodically(self) -> None:
        """Rescan the whole folder every `rescan_interval_s` (give or take RESCAN_JITTER).

        A safety net under the watcher, as Syncthing's hourly scan: inotify loses events in ways
        no code can see (a queue overflow is reported, but a rename racing a write, a file
        system that does not report every change, a bug), and a change never journaled is sent
        by nothing else, since the periodic comparison compares manifests, not the disk. The
        rescan stats every entry (about 0.1 CPU-s per 10,000 files, the watcher's changes wait
        meanwhile, as at start-up) and reads only what changed (`_rescan_all`);
        what it finds goes through the same checks as any change (hot files held, the
        mass-delete guard), and is logged as a warning: a watcher that misses changes is worth
        knowing about.
        """
        if self.rescan_interval_s <= 0:
            return
        while True:
            jitter = random.uniform(1 - RESCAN_JITTER, 1 + RESCAN_JITTER)
            await anyio.sleep(self.rescan_interval_s * jitter)
            found = await self._rescan_all()
            if found:
                logger.warning(
                    "source %s: the periodic rescan found %s changes the watcher did not "
                    "report; they are sent now (a lost inotify event: check the kernel log "
                    "and fs.inotify limits if this repeats)",
                    self.root,
                    found,
                )

    async def _rescan_all(self) -> int:
        """Rescan the whole folder in one detection; return the records it journaled. One, not
        a top-level entry at a time: the mass-delete guard judges what it finds together (a
        delete the watcher missed, found a directory at a time with slow scans between, was
        judged a slice at a time and went out). Skipped while a mass delete is held: the
        guard's own rescans look at the folder then (asked again once the lock is ours: a hold
        may begin while this waits for it)."""
        if self._guard_held:
            return 0
        async with self._record_lock:  # nothing else journals meanwhile: the count is ours
            if self._guard_held:
                return 0
            before = self.journal.last_seq
            await self._record_locked([FsEvent(kind="rescan", path="")])
            return self.journal.last_seq - before
