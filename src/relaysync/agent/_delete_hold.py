"""The hold of the mass-delete guard: deletes held for an operator, the alarm, and the rechecks.

A judgment that finds a mass delete (agent/_delete_runs.py) holds its deletes, and the changes
tied to them, until an operator confirms or a whole-folder rescan finds them gone; while it
lasts, a recheck looks every GUARD_RECHECK_S whether some held paths are back. The whole
behaviour is told in agent/_mass_delete_guard.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import anyio

from relaysync.protocol.messages import MassDeleteEnded, MassDeleteHeld
from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import split_path
from relaysync.watch.watcher import FsEvent

from ._delete_runs import DeleteRuns, Mode
from ._guard_paths import CREATE_OPS, at_or_below, below, fold, outermost, paths_of, tied

logger = logging.getLogger("relaysync.agent._mass_delete_guard")  # as before the split

GUARD_RECHECK_S = 5.0  # a hold looks this often whether some of its held paths are back
GUARD_RECHECK_MAX_S = 300.0  # ... and rescans the whole folder at least this often (5 s doubling)
GUARD_PROBE_PATHS = 64  # held paths a recheck looks for: one back brings the full rescan forward
GUARD_HELD_PATHS = 20000  # held paths kept exactly (a hold lasts: a fold into a live parent
# ties the changes there to the hold); more fold into their parents, and then a change of a path
# the manifest never knew, in a directory it knows and the disk still has, goes all the same

# Why a hold ended (MassDeleteEnded.reason), other than the source stopping (agent/_source_role.py)
END_PATHS_BACK = "paths back"  # a whole-folder rescan found the held deletes gone: nothing deleted
END_UNDER_THRESHOLD = "under threshold"  # ... found some, no longer most of the folder: journaled
END_CONFIRMED = "confirmed"  # an operator confirmed: the held deletes went
# The source's first full scan since it started found nothing to hold: a hold it had before the
# agent stopped (kept in memory only, and told nothing on a stop) is over, if there was one.
END_SOURCE_RESTARTED = "source restarted"

# Each hold's number (MassDeleteHeld.hold, MassDeleteEnded.hold), increasing in the agent and,
# from the clock's microseconds, across its restarts: an end ends only the hold it names.
_HOLD_NUMBERS = itertools.count(time.time_ns() // 1000)


class DeleteHold(DeleteRuns):
    """The hold of the mass-delete guard (a mixin: `_init_hold` sets its state)."""

    mapping_id: int
    on_guard: Callable[[MassDeleteHeld], None] | None
    on_hold_end: Callable[[MassDeleteEnded], None] | None  # a hold told by on_guard is over
    _guard_held: bool
    _guard_hold: int  # the hold's number (0: none since the source started)
    _guard_unjudged: bool  # no full scan since the source started found a hold, or none
    _guard_held_deletes: int  # the entries the hold keeps: the batch that tripped, and later ones
    _guard_held_paths: set[str]  # the held paths (and the changes tied to them), folded
    _guard_held_folded: bool  # ... past GUARD_HELD_PATHS: they cover more than was held
    _guard_probe: list[str]  # some of the held paths (of the last batch held)
    _guard_backoff_s: float  # the wait between full rescans of the hold, doubling
    _guard_due_s: float  # until the next full rescan
    _allow_mass_delete: bool
    _delete_confirm: int

    if TYPE_CHECKING:  # SourceMapping's, which journals what the rescan finds

        async def _record(self, events: Sequence[FsEvent], *, mode: Mode = "now") -> None: ...

    def _init_hold(self, delete_confirm: int) -> None:
        """The hold's state; `delete_confirm`: the confirmations made before we started."""
        self._guard_held = False
        self._guard_hold = 0
        self._guard_unjudged = True
        self._guard_held_deletes = 0
        self._clear_held()
        self._guard_probe = []
        self._guard_backoff_s = self._guard_due_s = 0.0
        self._allow_mass_delete = False
        self._delete_confirm = delete_confirm  # those count as seen
        self.on_guard = None
        self.on_hold_end = None

    def _add_held(self, paths: Iterable[str]) -> None:
        self._guard_held_paths.update(paths)
        if len(self._guard_held_paths) > GUARD_HELD_PATHS:
            self._guard_held_paths = fold(self._guard_held_paths, GUARD_HELD_PATHS)
            self._guard_held_folded = True

    def _clear_held(self) -> None:
        self._guard_held_paths = set()
        self._guard_held_folded = False

    def _unseen(self, c: PendingChange) -> bool:
        """Whether `c` makes a path the manifest never held, in a directory it holds (or the
        root) that the disk still has: no held delete is at, below or above it, whatever a
        folded held path covers. (A change of a known path below a folded one waits: the held
        deletes may be above it.)"""
        if c.op not in CREATE_OPS or self.manifest.get(c.path) is not None:
            return False
        parent = split_path(c.path)[0]
        if not parent:
            return True
        entry = self.manifest.get(parent)
        return entry is not None and entry.kind == "d" and (self.root / parent).is_dir()

    def _count_new_held(self, deletes: list[str]) -> int:
        """The entries `deletes` hold that no held path covers already (a recheck finds the
        held deletes again; `rm -rf d` reports d after its files)."""
        fresh = outermost(p for p in deletes if not at_or_below(p, self._guard_held_paths))
        if not fresh:
            return 0
        inner = below(fresh, self._guard_held_paths)
        known = self.manifest.count_trees(inner) if inner else 0
        return max(0, self.manifest.count_trees(fresh) - known)

    def _hold(
        self, changes: list[PendingChange], deletes: list[str], root_missing: bool
    ) -> tuple[list[PendingChange], list[str]]:
        """Hold `deletes` (and the changes tied to them) for an operator, unless one confirmed:
        then this batch goes (what is deleted later is judged anew, against what is left). Only
        a batch that trips the guard uses the confirmation up: a write journaled between the
        confirmation and its rescan must not, or the deletes are held (and alarmed) again."""
        if self._allow_mass_delete:
            self._allow_mass_delete = False
            if self._guard_held:
                anyio.from_thread.run_sync(self._hold_ended, END_CONFIRMED)
            self._guard_held = False
            self._clear_held()
            self._new_run()
            return changes, []
        held, go = tied(changes, deletes)
        self._guard_probe = deletes[:GUARD_PROBE_PATHS]
        # The exact figure: counting went no further than the threshold, and this count costs
        # less than the deletes would (one query per 500 paths, as many rows as they remove).
        # Counted before the hold is set: `deletes_held`, read on the event loop meanwhile,
        # never shows a hold with another hold's count.
        added = self._count_new_held(deletes)
        self._add_held(paths_of(held))
        if self._guard_held:  # a later part of the run (or a recheck: counted already)
            self._guard_held_deletes += added
        else:
            self._guard_held_deletes = added
            self._guard_held = True
            self._guard_hold = next(_HOLD_NUMBERS)
            self._guard_unjudged = False  # this hold replaces any the master shows
            self._guard_backoff_s = self._guard_due_s = GUARD_RECHECK_S
            self._alarm(added, self._run_size(), root_missing)
        self._run_held = True
        return go, paths_of(held)

    def _alarm(self, affected: int, total: int, root_missing: bool) -> None:
        """Log the held batch and tell the master (once per hold), from a worker thread."""
        logger.error(
            "mass-delete guard: %s would delete %s of %s entries%s (net, in this delete run: "
            "%s more went before); held until an operator confirms",
            self.root,
            affected,
            total,
            " (folder missing)" if root_missing else "",
            max(0, self._run_net - self._run_base),
        )
        if self.on_guard is not None:
            anyio.from_thread.run_sync(
                self.on_guard,
                MassDeleteHeld(
                    mapping_id=self.mapping_id,
                    deletes=affected,
                    entries=total,
                    root_missing=root_missing,
                    hold=self._guard_hold,
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

    def _guard_rescanned(self, sent: int) -> None:
        """A whole-folder rescan found no mass delete (under the record lock), and journaled
        `sent` deletes: the held deletes are gone (the disk came back, the files were put back,
        or what is deleted no longer makes most of the folder, and went), and so is the hold,
        with any confirmation no batch used: kept, it would let a later mass delete go unasked."""
        if self._guard_held:
            logger.warning(
                "mass-delete guard: %s no longer would delete most of its entries; hold ended, %s",
                self.root,
                f"{sent} deletes journaled (under the threshold now)"
                if sent
                else "nothing deleted (the folder is back)",
            )
            self._hold_ended(END_UNDER_THRESHOLD if sent else END_PATHS_BACK)
        elif self._guard_unjudged:
            self._hold_ended(END_SOURCE_RESTARTED, hold=0)  # which hold, this run cannot tell
        self._guard_unjudged = False
        self._guard_held = self._run_held = False
        self._clear_held()
        self._allow_mass_delete = False

    def _hold_ended(self, reason: str, *, hold: int | None = None) -> None:
        """Tell the master that the hold (`hold`, by default the one in force) is over (on the
        event loop): the console drops it."""
        if self.on_hold_end is not None:
            number = self._guard_hold if hold is None else hold
            self.on_hold_end(
                MassDeleteEnded(mapping_id=self.mapping_id, reason=reason, hold=number)
            )

    def stop_hold(self, reason: str) -> None:
        """The source stops (`reason`: its mapping removed, changed, or its run failed): a hold
        in force ends with it (a source started again holds anew what its scan finds)."""
        if self._guard_held:
            self._guard_held = False
            self._hold_ended(reason)

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
