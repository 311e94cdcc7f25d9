"""The mass-delete guard: a source's batch that would delete most of its folder waits for an operator.

SourceMapping (agent/source.py) inherits it and owns the state: the attributes declared below
are set in its __init__.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from relaysync.protocol.messages import MassDeleteHeld
from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import Manifest, ancestors
from relaysync.watch.watcher import FsEvent

logger = logging.getLogger(__name__)

GUARD_MIN_DELETES = 100  # the mass-delete guard never trips for fewer deleted entries than this
GUARD_FRACTION = 0.5  # ... nor for less than this share of the folder
GUARD_RECHECK_S = 5.0  # a hold looks this often whether some of its held paths are back
GUARD_RECHECK_MAX_S = 300.0  # ... and rescans the whole folder at least this often (5 s doubling)
GUARD_PROBE_PATHS = 64  # held paths a recheck looks for: one back brings the full rescan forward


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
    _guard_probe: list[str]  # some of the held paths (of the last batch held)
    _guard_backoff_s: float  # the wait between full rescans of the hold, doubling
    _guard_due_s: float  # until the next full rescan
    _allow_mass_delete: bool
    _delete_confirm: int

    if TYPE_CHECKING:  # SourceMapping's, which journals what the rescan finds

        async def _record(self, events: Sequence[FsEvent]) -> None: ...

    def _guard_trips(self, changes: list[PendingChange]) -> bool:
        """The mass-delete guard: hold a batch that would delete most of the folder.

        A vanished or suddenly emptied source folder (an unmounted disk) must not wipe the
        targets. The batch is not journaled (the manifest keeps the entries, so nothing is
        lost); the master is told and raises an alarm; an operator's confirmation lets it go.
        Only a batch that trips the guard uses the confirmation up: a write journaled between
        the confirmation and its rescan must not, or the deletes are held (and alarmed) again.
        """
        deletes = _outermost(c.path for c in changes if c.op == "delete")
        if not deletes:
            return False
        root_missing = not self.root.is_dir()
        # A deleted path removes itself and what is below it. The few deletes of most batches
        # are told apart without counting the whole folder.
        few = self.manifest.count_trees(deletes, limit=GUARD_MIN_DELETES) < GUARD_MIN_DELETES
        if few and not root_missing:
            return False
        total = self.manifest.count()
        threshold = max(GUARD_MIN_DELETES, int(total * GUARD_FRACTION))
        affected = self.manifest.count_trees(deletes, limit=threshold)
        if not root_missing and affected < threshold:
            return False
        if self._allow_mass_delete:  # confirmed by an operator: this batch goes, once
            self._allow_mass_delete = False
            self._guard_held = False
            return False
        self._guard_probe = deletes[:GUARD_PROBE_PATHS]
        if not self._guard_held:
            self._guard_held = True
            self._guard_backoff_s = self._guard_due_s = GUARD_RECHECK_S
            # The exact figure, once per hold: counting went no further than the threshold,
            # and this full count costs less than the deletes would (one query per 500 paths,
            # as many rows as they remove).
            self._alarm(self.manifest.count_trees(deletes), total, root_missing)
        return True

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
