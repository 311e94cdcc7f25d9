"""The mass-delete guard: a source's batch that would delete most of its folder waits for an operator.

Deletes are judged by EPISODE, not batch by batch: an `rm -rf` of a big tree, on a slow disk or
a loaded machine, or a deploy tool deleting file by file, reaches the source in many batches over
seconds or minutes, each a small part of what is left. An episode is the deletes that keep coming
with gaps shorter than GUARD_EPISODE_GAP_S; it is judged cumulatively against the folder as it
was when the episode began (the manifest's count plus the entries the episode already deleted):

- while the episode has deleted fewer than GUARD_MIN_DELETES entries, its deletes go at once;
- a batch that brings it to GUARD_FRACTION of the folder (and at least GUARD_MIN_DELETES) is
  held for an operator, and so is every later delete of the same episode;
- deletes between the two are not journaled while the episode runs: the source collects what
  follows (`_settle`) until none that may delete came for GUARD_EPISODE_GAP_S, and judges it all
  then. So fewer than GUARD_MIN_DELETES entries go before a mass delete is held, however long
  the `rm -rf` takes;
- the wait is bounded: past GUARD_EPISODE_MAX_S after its start, an episode that never paused is
  judged and decided as it goes (its deletes still count together, and still trip the guard).

SourceMapping (agent/source.py) inherits it and owns the state: the attributes declared below
are set in its __init__.
"""

from __future__ import annotations

import logging
import os
import time
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
GUARD_EPISODE_GAP_S = 2.0  # deletes that come closer together than this are one episode, judged
# as a whole; deletes past GUARD_MIN_DELETES wait until none came for this long (an `rm -rf`
# still running), and are then judged with all that came meanwhile
GUARD_EPISODE_MAX_S = 600.0  # ... at most this long after the episode's first delete

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
    _episode_start: float  # monotonic time of the current delete episode's first batch
    _episode_last: float  # ... and of its latest (judged, or come while it settles)
    _episode_deletes: int  # the entries its journaled batches deleted
    _episode_held: bool  # it tripped the guard: the rest of its deletes are held too
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
        self._episode_start = self._episode_last = float("-inf")  # none yet
        self._episode_deletes = 0
        self._episode_held = False
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
            verdict = self._judge_episode(deletes, settle=settle)
            if verdict != "hold":
                return verdict
        if self._allow_mass_delete:  # confirmed by an operator: this batch goes, once
            self._allow_mass_delete = False
            self._guard_held = False
            self._new_episode(time.monotonic())  # what is left is the folder judged from now
            return "pass"
        self._guard_probe = deletes[:GUARD_PROBE_PATHS]
        if not self._guard_held:
            self._episode_held = True  # the episode that tripped it (not a hold's rescans)
            # The exact figure, once per hold: counting went no further than the threshold,
            # and this full count costs less than the deletes would (one query per 500 paths,
            # as many rows as they remove). Counted before the hold is set: `deletes_held`,
            # read on the event loop meanwhile, never shows a hold with another hold's count.
            total = self.manifest.count() + self._episode_deletes
            self._guard_held_deletes = self.manifest.count_trees(deletes)
            self._guard_held = True
            self._guard_backoff_s = self._guard_due_s = GUARD_RECHECK_S
            self._alarm(self._guard_held_deletes, total, root_missing)
        return "hold"

    def _judge_episode(self, deletes: list[str], *, settle: bool) -> Verdict:
        """Judge `deletes` with those the current episode journaled, against the folder as it
        was before them (see the module's docstring). A deleted path removes itself and what is
        below it; the few deletes of most batches are told apart without counting the whole
        folder."""
        now = time.monotonic()
        if now - self._episode_last >= GUARD_EPISODE_GAP_S:  # none came for a while
            self._new_episode(now)
        self._episode_last = now
        if self._episode_held and not self._allow_mass_delete:  # (confirmed: on its own merits)
            return "hold"
        done = self._episode_deletes
        room = GUARD_MIN_DELETES - done
        if room > 0 and (few := self.manifest.count_trees(deletes, limit=room)) < room:
            self._episode_deletes += few
            return "pass"
        total = self.manifest.count() + done
        threshold = max(GUARD_MIN_DELETES, int(total * GUARD_FRACTION))
        affected = self.manifest.count_trees(deletes, limit=max(1, threshold - done))
        if done + affected >= threshold:
            return "hold"
        if settle and now - self._episode_start < GUARD_EPISODE_MAX_S:
            return "settle"  # the episode still runs: judged once it pauses
        self._episode_deletes += affected
        return "pass"

    def _new_episode(self, now: float) -> None:
        """Start a delete episode: nothing deleted, nothing held yet."""
        self._episode_start = self._episode_last = now
        self._episode_deletes = 0
        self._episode_held = False

    async def _settle(
        self, events: list[FsEvent], receive: MemoryObjectReceiveStream[list[FsEvent]]
    ) -> list[FsEvent]:
        """`events` and the batches that follow them while their delete episode runs: until
        none that may delete came for GUARD_EPISODE_GAP_S, at most until GUARD_EPISODE_MAX_S
        after the episode began. An `rm -rf` still running is judged whole, not by its first
        batches alone, however slowly it goes."""
        events = list(events)
        deadline = self._episode_start + GUARD_EPISODE_MAX_S
        quiet_at = time.monotonic() + GUARD_EPISODE_GAP_S
        while (wait_s := min(quiet_at, deadline) - time.monotonic()) > 0:
            with anyio.move_on_after(wait_s):
                try:
                    more = await receive.receive()
                except anyio.EndOfStream:
                    break
                events += more
                if any(e.kind in _MAY_DELETE for e in more):
                    quiet_at = time.monotonic() + GUARD_EPISODE_GAP_S
        # What came is judged next, with the episode it came in (not as the start of another).
        self._episode_last = time.monotonic()
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
        self._episode_held = False

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
