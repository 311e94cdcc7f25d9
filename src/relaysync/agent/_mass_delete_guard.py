"""The mass-delete guard: deletes that would remove most of a source's folder wait for an operator.

Deletes are judged by delete RUN, not batch by batch: an `rm -rf` reaches the source in many
watcher batches, over seconds or, for a big tree on a slow disk, minutes, each a small part of
what is left. A run lasts while each delete comes within GUARD_WINDOW_S of the one before; it
counts its NET loss: entries deleted (journaled, deferred or held) less entries created
(journaled) since the folder was at its largest in the run, against that size (the folder as the
run began, or bigger if it grew since). A folder with steady turnover (a log directory: one file
made, one removed) stays near 0, also while deletes are deferred, and so does a small cleanup.

- While the run's net loss stays under GUARD_MIN_DELETES more than what a judgment let go, its
  deletes go at once.
- Past it, the watcher's deletes are DEFERRED: not journaled (the manifest keeps those entries,
  as a hold does), only their paths (at most GUARD_DEFER_PATHS, folded into their parents past
  that) and counts kept; every other change goes at once, except one at, below or above a
  deferred or held path (`rm -rf d; echo > d`, `rm -rf site; mv site.new site`, in this batch
  or a later one): it waits, or is held, with them (a delete that waits so keeps its run going;
  below held paths folded past GUARD_HELD_PATHS, a change making a path the manifest never
  held, in a directory it holds and the disk has, goes).
- Deferred deletes that may bring the net loss to GUARD_FRACTION of the folder are CHECKED: a
  rescan of their paths counts them exactly; held for an operator if they do, deferred again if
  not (at most every GUARD_SETTLE_S, and at most GUARD_CHECK_DUTY of the time: a check of a
  folded tree rescans it whole).
- They are RELEASED when the run ends (GUARD_WINDOW_S without a delete), or GUARD_RUN_JUDGE_S
  after the first of them at the latest: a rescan of their paths finds them, judged with the
  run (never deferred again), with the entries they find made (a rename tied to the deletes
  comes back as deletes and writes: `rm -rf site; mv site.new site`, a deploy, loses little):
  journaled if the run stays under the threshold, else held. An
  `rm -rf` that reaches the threshold within GUARD_RUN_JUDGE_S sends at most GUARD_MIN_DELETES
  entries, however often it pauses (for less than the window); a slower one is judged every
  GUARD_RUN_JUDGE_S, its count adding up, and held once it reaches the threshold.
- A held run's later deletes are held too (and counted in `deletes_held`); the other changes go.

SourceMapping (agent/source.py) inherits it and owns the state: the attributes declared here and
in its parts are set in its __init__ (`_init_guard`). The parts: the delete runs and the
deferral (agent/_delete_runs.py `DeleteRuns`), the hold (agent/_delete_hold.py `DeleteHold`),
and the path sets they share (agent/_guard_paths.py); this module splits a batch between them.
"""

from __future__ import annotations

import time

from relaysync.watch.changes import PendingChange
from relaysync.watch.watcher import FsEvent, Watcher

from ._delete_hold import DeleteHold
from ._delete_runs import Mode
from ._guard_paths import at_or_below, outermost, paths_of, touches


class MassDeleteGuard(DeleteHold):
    """The mass-delete guard of SourceMapping (a mixin: SourceMapping.__init__ sets its state)."""

    watcher: Watcher | None  # the source's, which knows whether the folder was unmounted

    def _init_guard(self, delete_confirm: int) -> None:
        """The guard's state; `delete_confirm`: the confirmations made before we started."""
        self._init_runs()
        self._init_hold(delete_confirm)
        self.watcher = None

    def _guard_split(
        self, changes: list[PendingChange], *, mode: Mode
    ) -> tuple[list[PendingChange], list[str]]:
        """The mass-delete guard: which of `changes` to journal now (in a worker thread, under
        the record lock).

        A vanished or suddenly emptied source folder (an unmounted disk) must not wipe the
        targets, nor an `rm -rf` however slowly it goes. Deletes held for an operator, or
        deferred until their run is judged (see the module's docstring), are not journaled (the
        manifest keeps the entries, so nothing is lost), nor are the changes tied to them
        (`tied`, and for the watcher's later batches `_wait_with_earlier`); every other change
        goes at once.

        Returns:
            The changes to journal, and the paths of those that are not.
        """
        now = time.monotonic()
        waiting: list[str] = []
        made = 0
        if mode == "defer":
            changes, waiting = self._wait_with_earlier(changes, now)
        elif mode in ("check", "release"):  # a rescan of deferred deletes: the pair with creates
            made = self._made(changes)
        go, skipped = self._split_deletes(changes, mode, now, made)
        self._guard_sent += sum(1 for c in go if c.op == "delete")
        if mode in ("now", "defer"):  # a judged rescan of deferred deletes moves no base
            self._count_creates(go, now)
            self._run_base = min(self._run_base, self._run_net + self._deferred_entries)
        elif (
            made
        ):  # the run's own: journaled ones take from its loss, waiting ones from the deferred
            made_go = self._made(go)
            self._run_net -= made_go
            if self._deferred:
                self._deferred_entries = max(0, self._deferred_entries - (made - made_go))
        return go, waiting + skipped

    def _wait_with_earlier(
        self, changes: list[PendingChange], now: float
    ) -> tuple[list[PendingChange], list[str]]:
        """`changes` less those at, below or above a path held or deferred by an earlier batch
        (`rm -rf site`, then `mv site.new site`: journaled, the rename would replace the
        targets' whole site/): they are held, or deferred, with it; return their paths too."""
        if not (self._deferred or self._guard_held_paths):
            return changes, []
        held, deferred = self._guard_held_paths, self._deferred
        held_sorted, deferred_sorted = sorted(held), sorted(deferred)
        go, hold, wait = [], [], []
        folded = self._guard_held_folded
        for c in changes:
            if held and touches(c, held, held_sorted) and not (folded and self._unseen(c)):
                hold.append(c)
            elif deferred and touches(c, deferred, deferred_sorted):
                wait.append(c)
            else:
                go.append(c)
        if any(c.op == "delete" for c in (*hold, *wait)):  # they are the run's, timed as its
            self._run_goes_on(now)
        if hold:
            self._guard_held_deletes += self._count_new_held(
                [c.path for c in hold if c.op == "delete"]
            )
            self._add_held(paths_of(hold))
        if wait:
            deletes = outermost(c.path for c in wait if c.op == "delete")
            self._deferred_entries += self._count_deferring(deletes, limit=-1)
            self._add_deferred(paths_of(wait))
        return go, paths_of(hold) + paths_of(wait)

    def _split_deletes(
        self, changes: list[PendingChange], mode: Mode, now: float, made: int = 0
    ) -> tuple[list[PendingChange], list[str]]:
        """`_guard_split` of the changes no earlier batch ties: judge their deletes."""
        deletes = outermost(c.path for c in changes if c.op == "delete")
        if not deletes:
            return changes, []
        if mode in ("now", "defer"):  # a rescan of deferred deletes is no new delete
            self._run_goes_on(now)
        # Unmounted, the folder's path shows the mount point's own directory (empty, most often).
        root_missing = not self.root.is_dir() or (
            self.watcher is not None and self.watcher.root_lost
        )
        verdict, counted = ("hold", 0) if root_missing else self._judge_run(deletes, mode, made)
        if verdict == "pass":
            return changes, []
        if verdict == "defer":
            return self._defer(changes, deletes, now, counted)
        return self._hold(changes, deletes, root_missing)

    def _guard_skip_rest(self, events: list[FsEvent], skipped: set[str]) -> list[FsEvent]:
        """`events` (left to detect after a part of a batch) less those on or below a path the
        guard did not journal: they would be judged against the manifest's old state there. A
        deferral's rescan looks at them (added to it), a hold's rescans do."""
        if not skipped:
            return events
        out = []
        for event in events:
            paths = [p for p in (event.path, event.new_path) if p]
            if any(at_or_below(p, skipped) for p in paths):
                if any(at_or_below(p, self._guard_held_paths) for p in paths):
                    self._add_held(paths)
                elif self._deferred:
                    self._add_deferred(paths)
            else:
                out.append(event)
        return out
