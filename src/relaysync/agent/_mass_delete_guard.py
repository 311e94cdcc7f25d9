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

SourceMapping (agent/source.py) inherits it and owns the state: the attributes declared below
are set in its __init__.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio

from relaysync.protocol.messages import MassDeleteHeld
from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import Manifest, ancestors, split_path, subtree_bounds
from relaysync.watch.watcher import FsEvent, Watcher

logger = logging.getLogger(__name__)

GUARD_MIN_DELETES = 100  # the mass-delete guard never trips for fewer deleted entries than this
GUARD_FRACTION = 0.5  # ... nor for less than this share of the folder
GUARD_RECHECK_S = 5.0  # a hold looks this often whether some of its held paths are back
GUARD_RECHECK_MAX_S = 300.0  # ... and rescans the whole folder at least this often (5 s doubling)
GUARD_PROBE_PATHS = 64  # held paths a recheck looks for: one back brings the full rescan forward
GUARD_WINDOW_S = 10.0  # a delete run goes on while each delete comes this soon after the last
GUARD_SETTLE_S = 0.5  # deferred deletes are checked (counted exactly) at most this often
GUARD_RUN_JUDGE_S = 30.0  # deferred deletes are released (or held) this long after the first of
# them at the latest, if their run has not ended before: how long a slow cleanup that is no mass
# delete waits, and how long an `rm -rf` has to reach the threshold with nothing sent
GUARD_DEFER_PATHS = 1000  # deferred (and held) paths kept; more fold into their parents, so
# memory stays bounded however big the tree: the rescan of a parent finds what is below
GUARD_HELD_PATHS = 20000  # held paths kept exactly (a hold lasts: a fold into a live parent
# ties the changes there to the hold); more fold into their parents, and then a change of a path
# the manifest never knew, in a directory it knows and the disk still has, goes all the same
GUARD_CHECK_DUTY = 0.1  # checks take at most this share of the time (a check of deferred paths
# folded into the root is a rescan of the whole folder, under the record lock)

Verdict = Literal["pass", "defer", "hold"]  # go; wait for the run's judgment; held for an operator
# How a batch's deletes are judged: "now" (a rescan: go or held), "defer" (the watcher's: may
# wait), "check" and "release" (the rescan of deferred ones: held, or deferred again or go).
Mode = Literal["now", "defer", "check", "release"]
_CREATE_OPS = frozenset({"write", "mkdir", "symlink"})  # ops that may make a new entry


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths below none of the others, sorted: `rm -rf d` may report d/f and d, one tree."""
    given = set(paths)
    return sorted(p for p in given if not any(a in given for a in ancestors(p)))


def _fold(paths: Iterable[str], limit: int) -> set[str]:
    """`paths` folded into their parents until at most `limit` (>= 1) are left."""
    out = set(_outermost(paths))
    while len(out) > limit:
        out = set(_outermost(split_path(p)[0] for p in out))
    return out


def _at_or_below(path: str, tops: set[str]) -> bool:
    return path in tops or any(a in tops for a in ancestors(path))


def _has_below(path: str, ordered: list[str]) -> bool:
    """Whether one of `ordered` (sorted) is strictly below `path`."""
    low, high = subtree_bounds(path)
    i = bisect.bisect_left(ordered, low)
    return i < len(ordered) and ordered[i] < high


def _below(paths: Iterable[str], tops: set[str]) -> list[str]:
    """Those of `tops` strictly below one of `paths` (outermost)."""
    ordered = sorted(tops)
    out = set()
    for path in paths:
        low, high = subtree_bounds(path)
        i = bisect.bisect_left(ordered, low)
        while i < len(ordered) and ordered[i] < high:
            out.add(ordered[i])
            i += 1
    return _outermost(out)


def _touches(c: PendingChange, tops: set[str], ordered: list[str]) -> bool:
    """Whether `c` (its path or a rename's new path) is at, below or above one of `tops`."""
    return any(_at_or_below(p, tops) or _has_below(p, ordered) for p in (c.path, c.new_path) if p)


def _tied(
    changes: list[PendingChange], deletes: list[str]
) -> tuple[list[PendingChange], list[PendingChange]]:
    """`changes` split into the deletes and the changes tied to them, and the others.

    Tied: a change at or below a deleted path (`rm -rf d; mkdir d`: the mkdir must not reach
    a target that still has the old d), and a rename of a directory above one (the deleted
    entry moves with it in the manifest). They wait, or are held, with the deletes."""
    gone, ordered = set(deletes), sorted(deletes)

    def tied(c: PendingChange) -> bool:
        paths = [p for p in (c.path, c.new_path) if p]
        return (
            c.op == "delete"
            or any(_at_or_below(p, gone) for p in paths)
            or (c.op == "rename" and any(_has_below(p, ordered) for p in paths))
        )

    marks = [tied(c) for c in changes]
    held = [c for c, m in zip(changes, marks, strict=True) if m]
    return held, [c for c, m in zip(changes, marks, strict=True) if not m]


def _paths_of(changes: Iterable[PendingChange]) -> list[str]:
    return [p for c in changes for p in (c.path, c.new_path) if p]


class MassDeleteGuard:
    """The mass-delete guard of SourceMapping (a mixin: SourceMapping.__init__ sets its state)."""

    root: Path
    mapping_id: int
    manifest: Manifest
    on_guard: Callable[[MassDeleteHeld], None] | None
    _guard_held: bool
    _guard_held_deletes: int  # the entries the hold keeps: the batch that tripped, and later ones
    _guard_held_paths: set[str]  # the held paths (and the changes tied to them), folded
    _guard_held_folded: bool  # ... past GUARD_HELD_PATHS: they cover more than was held
    _guard_probe: list[str]  # some of the held paths (of the last batch held)
    _guard_backoff_s: float  # the wait between full rescans of the hold, doubling
    _guard_due_s: float  # until the next full rescan
    _guard_sent: int  # deletes journaled (ever): a rescan that ends a hold tells how many it sent
    _allow_mass_delete: bool
    _delete_confirm: int
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
    watcher: Watcher | None  # the source's, which knows whether the folder was unmounted
    _record_lock: anyio.Lock

    if TYPE_CHECKING:  # SourceMapping's, which journals what the rescan finds

        async def _record(self, events: Sequence[FsEvent], *, mode: Mode = "now") -> None: ...

        async def _record_locked(
            self, events: Sequence[FsEvent], *, mode: Mode = "now"
        ) -> None: ...

    def _init_guard(self, delete_confirm: int) -> None:
        """The guard's state; `delete_confirm`: the confirmations made before we started."""
        self._guard_held = False
        self._guard_held_deletes = self._guard_sent = 0
        self._clear_held()
        self._guard_probe = []
        self._guard_backoff_s = self._guard_due_s = 0.0
        self._allow_mass_delete = False
        self._delete_confirm = delete_confirm  # those count as seen
        self._run_last_s = float("-inf")  # no run yet
        self._new_run()
        self._deferral = anyio.Event()
        self._deferred = set()
        self._check_cost_s = 0.0
        self._take_deferred()
        self.on_guard = None
        self.watcher = None

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
        paths = _outermost(self._deferred)
        self._deferred = set()
        self._deferred_entries = 0
        if not keep_clock:
            self._deferred_first_s = self._checked_s = 0.0
            if self._deferral.is_set():
                self._deferral = anyio.Event()
        return paths

    def _guard_split(
        self, changes: list[PendingChange], *, mode: Mode
    ) -> tuple[list[PendingChange], list[str]]:
        """The mass-delete guard: which of `changes` to journal now (in a worker thread, under
        the record lock).

        A vanished or suddenly emptied source folder (an unmounted disk) must not wipe the
        targets, nor an `rm -rf` however slowly it goes. Deletes held for an operator, or
        deferred until their run is judged (see the module's docstring), are not journaled (the
        manifest keeps the entries, so nothing is lost), nor are the changes tied to them
        (`_tied`, and for the watcher's later batches `_wait_with_earlier`); every other change
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

    def _made(self, changes: list[PendingChange]) -> int:
        """The entries `changes` create (paths the manifest does not hold)."""
        paths = sorted({c.path for c in changes if c.op in _CREATE_OPS})
        return len(paths) - self.manifest.count_present(paths) if paths else 0

    def _run_goes_on(self, now: float) -> None:
        """A delete came (the watcher's): the run goes on, or a new one begins."""
        if now - self._run_last_s > GUARD_WINDOW_S:
            self._new_run()
        self._run_last_s = now

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
            if held and _touches(c, held, held_sorted) and not (folded and self._unseen(c)):
                hold.append(c)
            elif deferred and _touches(c, deferred, deferred_sorted):
                wait.append(c)
            else:
                go.append(c)
        if any(c.op == "delete" for c in (*hold, *wait)):  # they are the run's, timed as its
            self._run_goes_on(now)
        if hold:
            self._guard_held_deletes += self._count_new_held(
                [c.path for c in hold if c.op == "delete"]
            )
            self._add_held(_paths_of(hold))
        if wait:
            deletes = _outermost(c.path for c in wait if c.op == "delete")
            self._deferred_entries += self._count_deferring(deletes, limit=-1)
            self._add_deferred(_paths_of(wait))
        return go, _paths_of(hold) + _paths_of(wait)

    def _split_deletes(
        self, changes: list[PendingChange], mode: Mode, now: float, made: int = 0
    ) -> tuple[list[PendingChange], list[str]]:
        """`_guard_split` of the changes no earlier batch ties: judge their deletes."""
        deletes = _outermost(c.path for c in changes if c.op == "delete")
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

    def _count_creates(self, journaled: list[PendingChange], now: float) -> None:
        """Entries made (journaled) while a run goes on take from its net loss: turnover is
        no delete. Only journaled ones: a create that waits is counted when it goes."""
        if now - self._run_last_s > GUARD_WINDOW_S:
            return
        made = sorted({c.path for c in journaled if c.op in _CREATE_OPS})
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
        inner = _below(deletes, self._deferred)
        known = self.manifest.count_trees(inner) if inner else 0
        total = self.manifest.count_trees(deletes, limit=limit + known if limit >= 0 else -1)
        return max(0, total - known)

    def _defer(
        self, changes: list[PendingChange], deletes: list[str], now: float, counted: int
    ) -> tuple[list[PendingChange], list[str]]:
        """Keep `deletes` (`counted` entries) and the changes tied to them for the run's
        judgment; the others go."""
        waiting, go = _tied(changes, deletes)
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
        skipped = _paths_of(waiting)
        self._add_deferred(skipped)
        self._deferred_entries += counted
        return go, skipped

    def _add_deferred(self, paths: Iterable[str]) -> None:
        self._deferred.update(paths)
        if len(self._deferred) > GUARD_DEFER_PATHS:
            self._deferred = _fold(self._deferred, GUARD_DEFER_PATHS)

    def _add_held(self, paths: Iterable[str]) -> None:
        self._guard_held_paths.update(paths)
        if len(self._guard_held_paths) > GUARD_HELD_PATHS:
            self._guard_held_paths = _fold(self._guard_held_paths, GUARD_HELD_PATHS)
            self._guard_held_folded = True

    def _clear_held(self) -> None:
        self._guard_held_paths = set()
        self._guard_held_folded = False

    def _unseen(self, c: PendingChange) -> bool:
        """Whether `c` makes a path the manifest never held, in a directory it holds (or the
        root) that the disk still has: no held delete is at, below or above it, whatever a
        folded held path covers. (A change of a known path below a folded one waits: the held
        deletes may be above it.)"""
        if c.op not in _CREATE_OPS or self.manifest.get(c.path) is not None:
            return False
        parent = split_path(c.path)[0]
        if not parent:
            return True
        entry = self.manifest.get(parent)
        return entry is not None and entry.kind == "d" and (self.root / parent).is_dir()

    def _count_new_held(self, deletes: list[str]) -> int:
        """The entries `deletes` hold that no held path covers already (a recheck finds the
        held deletes again; `rm -rf d` reports d after its files)."""
        fresh = _outermost(p for p in deletes if not _at_or_below(p, self._guard_held_paths))
        if not fresh:
            return 0
        inner = _below(fresh, self._guard_held_paths)
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
            self._guard_held = False
            self._clear_held()
            self._new_run()
            return changes, []
        held, go = _tied(changes, deletes)
        self._guard_probe = deletes[:GUARD_PROBE_PATHS]
        # The exact figure: counting went no further than the threshold, and this count costs
        # less than the deletes would (one query per 500 paths, as many rows as they remove).
        # Counted before the hold is set: `deletes_held`, read on the event loop meanwhile,
        # never shows a hold with another hold's count.
        added = self._count_new_held(deletes)
        self._add_held(_paths_of(held))
        if self._guard_held:  # a later part of the run (or a recheck: counted already)
            self._guard_held_deletes += added
        else:
            self._guard_held_deletes = added
            self._guard_held = True
            self._guard_backoff_s = self._guard_due_s = GUARD_RECHECK_S
            self._alarm(added, self._run_size(), root_missing)
        self._run_held = True
        return go, _paths_of(held)

    def _guard_skip_rest(self, events: list[FsEvent], skipped: set[str]) -> list[FsEvent]:
        """`events` (left to detect after a part of a batch) less those on or below a path the
        guard did not journal: they would be judged against the manifest's old state there. A
        deferral's rescan looks at them (added to it), a hold's rescans do."""
        if not skipped:
            return events
        out = []
        for event in events:
            paths = [p for p in (event.path, event.new_path) if p]
            if any(_at_or_below(p, skipped) for p in paths):
                if any(_at_or_below(p, self._guard_held_paths) for p in paths):
                    self._add_held(paths)
                elif self._deferred:
                    self._add_deferred(paths)
            else:
                out.append(event)
        return out

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
                ),
            )

    @property
    def deletes_held(self) -> int:
        """The entries whose deletes are held for an operator now; 0 when nothing is held."""
        return self._guard_held_deletes if self._guard_held else 0

    @property
    def deletes_deferred(self) -> int:
        """The entries whose deletes wait for their run's judgment now (about: exact after a
        check, maybe more since); 0 when none wait."""
        return self._deferred_entries if self._deferred else 0

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
        self._guard_held = self._run_held = False
        self._clear_held()
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


def _threshold(total: int) -> int:
    """The deleted entries that make a mass delete of a folder of `total` entries."""
    return max(GUARD_MIN_DELETES, int(total * GUARD_FRACTION))
