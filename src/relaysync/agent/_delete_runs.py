"""Delete runs of the mass-delete guard: their net loss, and the deferral of their deletes.

A run lasts while each delete comes within GUARD_WINDOW_S of the one before; past
GUARD_MIN_DELETES of net loss its deletes are deferred, checked once they may reach
GUARD_FRACTION of the folder, and released (judged) when the run ends or GUARD_RUN_JUDGE_S after
the first of them. The whole behaviour is told in agent/_mass_delete_guard.py; the hold that a
judgment may end in is agent/_delete_hold.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio

from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import Manifest
from relaysync.watch.watcher import FsEvent

from ._guard_paths import CREATE_OPS, below, fold, outermost, paths_of, tied

logger = logging.getLogger("relaysync.agent._mass_delete_guard")  # as before the split

GUARD_MIN_DELETES = 100  # the mass-delete guard never trips for fewer deleted entries than this
GUARD_FRACTION = 0.5  # ... nor for less than this share of the folder
GUARD_WINDOW_S = 10.0  # a delete run goes on while each delete comes this soon after the last
GUARD_SETTLE_S = 0.5  # deferred deletes are checked (counted exactly) at most this often
GUARD_RUN_JUDGE_S = 30.0  # deferred deletes are released (or held) this long after the first of
# them at the latest, if their run has not ended before: how long a slow cleanup that is no mass
# delete waits, and how long an `rm -rf` has to reach the threshold with nothing sent
GUARD_DEFER_PATHS = 1000  # deferred (and held) paths kept; more fold into their parents, so
# memory stays bounded however big the tree: the rescan of a parent finds what is below
GUARD_CHECK_DUTY = 0.1  # checks take at most this share of the time (a check of deferred paths
# folded into the root is a rescan of the whole folder, under the record lock)

Verdict = Literal["pass", "defer", "hold"]  # go; wait for the run's judgment; held for an operator
# How a batch's deletes are judged: "now" (a rescan: go or held), "defer" (the watcher's: may
# wait), "check" and "release" (the rescan of deferred ones: held, or deferred again or go).
Mode = Literal["now", "defer", "check", "release"]


class DeleteRuns:
    """The delete runs of the mass-delete guard (a mixin: `_init_runs` sets its state)."""

    root: Path
    manifest: Manifest
    _guard_sent: int  # deletes journaled (ever): a rescan that ends a hold tells how many it sent
    _guard_held: bool  # the hold's (DeleteHold): a release tells whether it held the rest
    _run_last_s: float  # monotonic time of the current delete run's latest delete
    # The run's net loss, signed: entries its journaled deletes removed less entries its
    # journaled changes created. With `_deferred_entries`, what the run took (held deletes are
    # counted by the rescans that find them again).
    _run_net: int
    _run_base: int  # the least of `_run_net + _deferred_entries` in the run (<= 0): the folder
    # was at its largest then, `_run_total - _run_base` entries
    _run_total: int  # the folder's entries when the run began (counted when first needed; 0: not)
    _run_accepted: int  # the net loss a judgment let go: the next GUARD_MIN_DELETES go at once
    _run_held: bool  # it tripped the guard: the watcher's further deletes of it are held too
    _deferred: set[str]  # paths whose deletes (and the changes tied to them) await judgment
    _deferred_entries: int  # the entries they hold: exact after a check, maybe more after that
    _deferred_first_s: float  # monotonic time of the first deferral (0: none)
    _checked_s: float  # ... and of the end of the last check
    _check_cost_s: float  # ... and how long it took
    _deferral: anyio.Event  # set once something is deferred: the judge (`_judge_deferred`) waits
    _record_lock: anyio.Lock

    if TYPE_CHECKING:  # SourceMapping's, which journals what the rescan finds

        async def _record_locked(
            self, events: Sequence[FsEvent], *, mode: Mode = "now"
        ) -> None: ...

    def _init_runs(self) -> None:
        """The runs' state: no run yet, nothing deferred, no delete journaled."""
        self._guard_sent = 0
        self._run_last_s = float("-inf")  # no run yet
        self._new_run()
        self._deferral = anyio.Event()
        self._deferred = set()
        self._check_cost_s = 0.0
        self._take_deferred()

    def _new_run(self) -> None:
        self._run_net = self._run_base = self._run_total = self._run_accepted = 0
        self._run_held = False

    def _run_loss(self) -> int:
        """The run's net loss so far, from the folder's largest size in the run."""
        return self._run_net + self._deferred_entries - self._run_base

    def _run_size(self) -> int:
        """The folder the run is judged against: at its largest in the run."""
        if not self._run_total:  # the manifest still holds the deferred and held entries
            self._run_total = self.manifest.count() + self._run_net
        return self._run_total - self._run_base

    def _take_deferred(self, *, keep_clock: bool = False) -> list[str]:
        """The deferred paths (outermost), forgotten (on the event loop: a new `_deferral`);
        with `keep_clock` (a check) the deferral keeps its start."""
        paths = outermost(self._deferred)
        self._deferred = set()
        self._deferred_entries = 0
        if not keep_clock:
            self._deferred_first_s = self._checked_s = 0.0
            if self._deferral.is_set():
                self._deferral = anyio.Event()
        return paths

    def _made(self, changes: list[PendingChange]) -> int:
        """The entries `changes` create (paths the manifest does not hold)."""
        paths = sorted({c.path for c in changes if c.op in CREATE_OPS})
        return len(paths) - self.manifest.count_present(paths) if paths else 0

    def _run_goes_on(self, now: float) -> None:
        """A delete came (the watcher's): the run goes on, or a new one begins."""
        if now - self._run_last_s > GUARD_WINDOW_S:
            self._new_run()
        self._run_last_s = now

    def _count_creates(self, journaled: list[PendingChange], now: float) -> None:
        """Entries made (journaled) while a run goes on take from its net loss: turnover is
        no delete. Only journaled ones: a create that waits is counted when it goes."""
        if now - self._run_last_s > GUARD_WINDOW_S:
            return
        made = sorted({c.path for c in journaled if c.op in CREATE_OPS})
        if made:
            self._run_net -= len(made) - self.manifest.count_present(made)

    def _judge_run(self, deletes: list[str], mode: Mode, made: int = 0) -> tuple[Verdict, int]:
        """Judge `deletes` with their run; return the verdict and, to defer, their entries
        (exact for a check, else as far as judging needs). A deleted path removes itself and
        what is below it; the few deletes of most batches are told apart without counting the
        whole folder. The check, the release and the recheck of a hold judge the same figure:
        the run's net loss with these deletes, against the folder at its largest in the run; the
        check and the release count the batch's `made` entries with it (`rm -rf site; mv
        site.new site`, tied, comes back as the deletes of both trees and the new site's writes:
        a deploy, no loss)."""
        if self._run_held and mode == "defer":
            return "hold", 0
        loss = self._run_loss()
        if mode != "check" and not self._deferred:
            room = GUARD_MIN_DELETES - max(0, loss - self._run_accepted)
            if room > 0 and (few := self.manifest.count_trees(deletes, limit=room)) < room:
                self._run_net += few
                return "pass", 0
        threshold = _threshold(self._run_size())
        if mode == "defer":  # counted as far as a check needs (the check counts exactly)
            return "defer", self._count_deferring(deletes, limit=max(1, threshold - loss))
        affected = self.manifest.count_trees(deletes, limit=max(1, threshold - loss + made))
        if loss + affected - made >= threshold:
            return "hold", 0
        if mode == "check":
            return "defer", affected
        self._run_net += affected
        self._run_accepted = self._run_loss()  # judged: the next deletes need not wait at once
        return "pass", 0

    def _count_deferring(self, deletes: list[str], *, limit: int) -> int:
        """The entries `deletes` hold, less those of paths deferred already below them (`rm -rf
        d` reports d's files, then d, in a later batch): counted once, a check is not brought
        forward by half."""
        inner = below(deletes, self._deferred)
        known = self.manifest.count_trees(inner) if inner else 0
        total = self.manifest.count_trees(deletes, limit=limit + known if limit >= 0 else -1)
        return max(0, total - known)

    def _defer(
        self, changes: list[PendingChange], deletes: list[str], now: float, counted: int
    ) -> tuple[list[PendingChange], list[str]]:
        """Keep `deletes` (`counted` entries) and the changes tied to them for the run's
        judgment; the others go."""
        waiting, go = tied(changes, deletes)
        if not self._deferred_first_s:
            self._deferred_first_s = now
            logger.info(
                "mass-delete guard: %s: deferring deletes (the run's net loss reached %s of %s "
                "entries); judged when the run ends, in %.0f s at most",
                self.root,
                self._run_loss() + counted,
                self._run_size(),
                GUARD_RUN_JUDGE_S,
            )
        skipped = paths_of(waiting)
        self._add_deferred(skipped)
        self._deferred_entries += counted
        return go, skipped

    def _add_deferred(self, paths: Iterable[str]) -> None:
        self._deferred.update(paths)
        if len(self._deferred) > GUARD_DEFER_PATHS:
            self._deferred = fold(self._deferred, GUARD_DEFER_PATHS)

    def _deferred_due(self) -> tuple[Literal["check", "release"] | None, float]:
        """What to do with the deferred deletes now, or how long to wait before asking again."""
        now = time.monotonic()
        release_at = min(
            self._run_last_s + GUARD_WINDOW_S, self._deferred_first_s + GUARD_RUN_JUDGE_S
        )
        if not self._deferred or now >= release_at:
            return "release", 0.0
        if (
            self._run_total  # counted when the deletes were deferred (0: a new run since)
            and self._run_loss() >= _threshold(self._run_total - self._run_base)
            and now - self._checked_s >= max(GUARD_SETTLE_S, self._check_cost_s / GUARD_CHECK_DUTY)
        ):
            return "check", 0.0
        return None, min(release_at - now, GUARD_SETTLE_S)

    async def _judge_deferred(self) -> None:
        """Check and release deferred deletes when due (`_deferred_due`), while the source runs."""
        while True:
            await self._deferral.wait()
            while True:
                action, wait_s = self._deferred_due()
                if action is not None:
                    break
                await anyio.sleep(wait_s)
            await self._judge_deferred_now(action)

    async def _judge_deferred_now(self, action: Literal["check", "release"] = "release") -> None:
        """Rescan the deferred paths: what is deleted there is judged with the run at once."""
        async with self._record_lock:
            started_s = time.monotonic()
            entries, sent = self._deferred_entries, self._guard_sent
            paths = self._take_deferred(keep_clock=action == "check")
            if paths:
                logger.log(
                    logging.DEBUG if action == "check" else logging.INFO,
                    "mass-delete guard: %s: %s deferred deletes (about %s entries, %s paths)",
                    self.root,
                    "checking" if action == "check" else "releasing",
                    entries,
                    len(paths),
                )
                await self._record_locked(
                    [FsEvent(kind="rescan", path=p) for p in paths], mode=action
                )
            if action == "release" and paths:
                logger.info(
                    "mass-delete guard: %s: deferral ended, %s deletes journaled%s",
                    self.root,
                    self._guard_sent - sent,
                    ", the rest held" if self._guard_held else "",
                )
            if self._deferred:
                self._checked_s = time.monotonic()
                self._check_cost_s = self._checked_s - started_s
            else:  # held, or gone: nothing waits
                self._take_deferred()

    @property
    def deletes_deferred(self) -> int:
        """The entries whose deletes wait for their run's judgment now (about: exact after a
        check, maybe more since); 0 when none wait."""
        return self._deferred_entries if self._deferred else 0


def _threshold(total: int) -> int:
    """The deleted entries that make a mass delete of a folder of `total` entries."""
    return max(GUARD_MIN_DELETES, int(total * GUARD_FRACTION))
