"""The mass-delete guard: a source's batch that would delete most of its folder waits for an operator.

SourceMapping (agent/source.py) inherits it and owns the state: the attributes declared below
are set in its __init__.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from relaysync.protocol.messages import MassDeleteHeld
from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import Manifest, ancestors
from relaysync.watch.watcher import FsEvent, Watcher

logger = logging.getLogger(__name__)

GUARD_MIN_DELETES = 100  # the mass-delete guard never trips for fewer deleted entries than this
GUARD_FRACTION = 0.5  # ... nor for less than this share of the folder
GUARD_RECHECK_S = 5.0  # a hold looks this often whether some of its held paths are back
GUARD_RECHECK_MAX_S = 300.0  # ... and rescans the whole folder at least this often (5 s doubling)
GUARD_PROBE_PATHS = 64  # held paths a recheck looks for: one back brings the full rescan forward
GUARD_WINDOW_S = 10.0  # deletes journaled this recently count with a batch's own: `rm -rf` of a
# big tree reaches the source in several batches, and each alone is a fraction of what is left
GUARD_SETTLE_S = 0.5  # deletes past GUARD_MIN_DELETES wait until none came for this long (an
# `rm -rf` still running), at most GUARD_WINDOW_S, and are then judged with the ones that came

Verdict = Literal["pass", "hold", "settle"]  # go; held for an operator; wait for more, then judge
_MAY_DELETE = frozenset({"delete", "move", "rescan"})  # event kinds a delete may come from


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths below none of the others, sorted: `rm -rf d` may report d/f and d, one tree."""
    given = set(paths)
    return sorted(p for p in given if not any(a in given for a in ancestors(p)))


class MassDeleteGuard:
    """The mass-delete guard of SourceMapping (a mixin: SourceMapping.__init__ sets its state)."""

    root: Path
    mapping_id: int
    manifest: Manifest
    on_guard: Callable[[MassDeleteHeld], None] | None
    _guard_held: bool
    _guard_held_deletes: int  # the entries the hold keeps (as alarmed)
    _guard_probe: list[str]  # some of the held paths (of the last batch held)
    _guard_backoff_s: float  # the wait between full rescans of the hold, doubling
    _guard_due_s: float  # until the next full rescan
    _allow_mass_delete: bool
    _delete_confirm: int
    _guard_recent: deque[tuple[float, int]]  # (monotonic time, entries) of deletes journaled
    watcher: Watcher | None  # the source's, which knows whether the folder was unmounted

    if TYPE_CHECKING:  # SourceMapping's, which journals what the rescan finds

        async def _record(self, events: Sequence[FsEvent], *, settle: bool = False) -> bool: ...

    def _init_guard(self, delete_confirm: int) -> None:
        """The guard's state; `delete_confirm`: the confirmations made before we started."""
        self._guard_held = False
        self._guard_held_deletes = 0
        self._guard_probe = []
        self._guard_backoff_s = self._guard_due_s = 0.0
        self._allow_mass_delete = False
        self._delete_confirm = delete_confirm  # those count as seen
        self._guard_recent = deque()
        self.on_guard = None
        self.watcher = None

    def _guard_verdict(self, changes: list[PendingChange], *, settle: bool) -> Verdict:
        """The mass-delete guard: hold a batch that would delete most of the folder.

        A vanished or suddenly emptied source folder (an unmounted disk) must not wipe the
        targets. The batch is not journaled (the manifest keeps the entries, so nothing is
        lost); the master is told and raises an alarm; an operator's confirmation lets it go.
        Only a batch that trips the guard uses the confirmation up: a write journaled between
        the confirmation and its rescan must not, or the deletes are held (and alarmed) again.
        With `settle`, deletes that are no mass delete yet, but many, are "settle": the caller
        waits for what follows (`_settle`) and asks again without it.
        """
        deletes = _outermost(c.path for c in changes if c.op == "delete")
        if not deletes:
            return "pass"
        # Unmounted, the folder's path shows the mount point's own directory (empty, most often).
        root_missing = not self.root.is_dir() or (
            self.watcher is not None and self.watcher.root_lost
        )
        if not root_missing:
            verdict = self._judge_window(deletes, settle=settle)
            if verdict != "hold":
                return verdict
        if self._allow_mass_delete:  # confirmed by an operator: this batch goes, once
            self._allow_mass_delete = False
            self._guard_held = False
            self._guard_recent.clear()
            return "pass"
        self._guard_probe = deletes[:GUARD_PROBE_PATHS]
        if not self._guard_held:
            # The exact figure, once per hold: counting went no further than the threshold,
            # and this full count costs less than the deletes would (one query per 500 paths,
            # as many rows as they remove). Counted before the hold is set: `deletes_held`,
            # read on the event loop meanwhile, never shows a hold with another hold's count.
            total = self.manifest.count() + self._recent_deletes(time.monotonic())
            self._guard_held_deletes = self.manifest.count_trees(deletes)
            self._guard_held = True
            self._guard_backoff_s = self._guard_due_s = GUARD_RECHECK_S
            self._alarm(self._guard_held_deletes, total, root_missing)
        return "hold"

    def _judge_window(self, deletes: list[str], *, settle: bool) -> Verdict:
        """Judge `deletes` with those journaled in the last GUARD_WINDOW_S, against the folder
        as it was before them. A deleted path removes itself and what is below it; the few
        deletes of most batches are told apart without counting the whole folder."""
        now = time.monotonic()
        recent = self._recent_deletes(now)
        room = GUARD_MIN_DELETES - recent
        if room > 0 and (few := self.manifest.count_trees(deletes, limit=room)) < room:
            self._guard_recent.append((now, few))
            return "pass"
        total = self.manifest.count() + recent
        threshold = max(GUARD_MIN_DELETES, int(total * GUARD_FRACTION))
        affected = self.manifest.count_trees(deletes, limit=max(1, threshold - recent))
        if recent + affected >= threshold:
            return "hold"
        if settle:
            return "settle"
        self._guard_recent.append((now, affected))
        return "pass"

    def _recent_deletes(self, now: float) -> int:
        """The entries deleted by batches journaled in the last GUARD_WINDOW_S."""
        while self._guard_recent and self._guard_recent[0][0] < now - GUARD_WINDOW_S:
            self._guard_recent.popleft()
        return sum(n for _, n in self._guard_recent)

    async def _settle(
        self, events: list[FsEvent], receive: MemoryObjectReceiveStream[list[FsEvent]]
    ) -> list[FsEvent]:
        """`events` and the batches that follow them until none that may delete came for
        GUARD_SETTLE_S (at most GUARD_WINDOW_S): an `rm -rf` still running is judged whole,
        not by its first batches alone."""
        events = list(events)
        deadline = time.monotonic() + GUARD_WINDOW_S
        quiet_at = time.monotonic() + GUARD_SETTLE_S
        while (wait_s := min(quiet_at, deadline) - time.monotonic()) > 0:
            with anyio.move_on_after(wait_s):
                try:
                    more = await receive.receive()
                except anyio.EndOfStream:
                    break
                events += more
                if any(e.kind in _MAY_DELETE for e in more):
                    quiet_at = time.monotonic() + GUARD_SETTLE_S
        return events

    def _alarm(self, affected: int, total: int, root_missing: bool) -> None:
        """Log the held batch and tell the master (once per hold), from a worker thread."""
        logger.error(
            "mass-delete guard: %s would delete %s of %s entries%s; held until an operator "
            "confirms",
            self.root,
            affected,
            total,
            " (folder missing)" if root_missing else "",
        )
        if self.on_guard is not None:
            anyio.from_thread.run_sync(
                self.on_guard,
                MassDeleteHeld(
                    mapping_id=self.mapping_id,
                    deletes=affected,
                    entries=total,
                    root_missing=root_missing,
                ),
            )

    @property
    def deletes_held(self) -> int:
        """The entries whose deletes are held for an operator now; 0 when nothing is held."""
        return self._guard_held_deletes if self._guard_held else 0

    def confirm_deletes(self, count: int) -> bool:
        """An operator confirmed (counter `count`): the next rescan may delete what was held."""
        if count <= self._delete_confirm:
            return False
        self._delete_confirm = count
        if self._guard_held:
            self._allow_mass_delete = True
        return True

    def _guard_rescanned(self) -> None:
        """A whole-folder rescan found no mass delete (under the record lock): the held deletes
        are gone (the disk came back, the files were put back), and so is the hold, with any
        confirmation no batch used: kept, it would let a later mass delete go unasked."""
        if self._guard_held:
            logger.warning(
                "mass-delete guard: %s no longer would delete most of its entries (the folder "
                "is back); hold ended, nothing deleted",
                self.root,
            )
        self._guard_held = False
        self._allow_mass_delete = False

    async def _recheck_guard(self) -> None:
        """While deletes are held, look now and then whether they still are."""
        while True:
            await anyio.sleep(GUARD_RECHECK_S)
            if self._guard_held:
                await self._recheck_hold()

    async def _recheck_hold(self) -> None:
        """Rescan the whole folder (whose end, found gone, ends the hold: `_guard_rescanned`)
        when a held path is back, else only when the backoff is due: for a big folder a full
        rescan is a walk of millions of files, while the disk stays away for hours."""
        self._guard_due_s -= GUARD_RECHECK_S
        if self._guard_due_s > 0 and not await anyio.to_thread.run_sync(self._guard_probe_back):
            return
        await self._record([FsEvent(kind="rescan", path="")])
        if self._guard_held:  # still pending
            self._guard_backoff_s = min(2 * self._guard_backoff_s, GUARD_RECHECK_MAX_S)
            self._guard_due_s = self._guard_backoff_s

    def _guard_probe_back(self) -> bool:
        """Whether one of the held paths looked for (GUARD_PROBE_PATHS of them) is back."""
        return self.root.is_dir() and any(os.path.lexists(self.root / p) for p in self._guard_probe)
