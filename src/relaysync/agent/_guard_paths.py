"""Path sets of the mass-delete guard: which changes touch a deleted, deferred or held tree.

A deleted path stands for itself and everything below it, so the guard keeps the outermost
paths only, folds them into their parents to bound memory, and ties to them every change at,
below or (a rename) above them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import ancestors, split_path, subtree_bounds

CREATE_OPS = frozenset({"write", "mkdir", "symlink"})  # ops that may make a new entry


def outermost(paths: Iterable[str]) -> list[str]:
    """The paths below none of the others, sorted: `rm -rf d` may report d/f and d, one tree."""
    given = set(paths)
    return sorted(p for p in given if not any(a in given for a in ancestors(p)))


def fold(paths: Iterable[str], limit: int) -> set[str]:
    """`paths` folded into their parents until at most `limit` (>= 1) are left."""
    out = set(outermost(paths))
    while len(out) > limit:
        out = set(outermost(split_path(p)[0] for p in out))
    return out


def at_or_below(path: str, tops: set[str]) -> bool:
    return path in tops or any(a in tops for a in ancestors(path))


def has_below(path: str, ordered: list[str]) -> bool:
    """Whether one of `ordered` (sorted) is strictly below `path`."""
    low, high = subtree_bounds(path)
    i = bisect.bisect_left(ordered, low)
    return i < len(ordered) and ordered[i] < high


def below(paths: Iterable[str], tops: set[str]) -> list[str]:
    """Those of `tops` strictly below one of `paths` (outermost)."""
    ordered = sorted(tops)
    out = set()
    for path in paths:
        low, high = subtree_bounds(path)
        i = bisect.bisect_left(ordered, low)
        while i < len(ordered) and ordered[i] < high:
            out.add(ordered[i])
            i += 1
    return outermost(out)


def touches(c: PendingChange, tops: set[str], ordered: list[str]) -> bool:
    """Whether `c` (its path or a rename's new path) is at, below or above one of `tops`."""
    return any(at_or_below(p, tops) or has_below(p, ordered) for p in (c.path, c.new_path) if p)


def tied(
    changes: list[PendingChange], deletes: list[str]
) -> tuple[list[PendingChange], list[PendingChange]]:
    """`changes` split into the deletes and the changes tied to them, and the others.

    Tied: a change at or below a deleted path (`rm -rf d; mkdir d`: the mkdir must not reach
    a target that still has the old d), and a rename of a directory above one (the deleted
    entry moves with it in the manifest). They wait, or are held, with the deletes."""
    gone, ordered = set(deletes), sorted(deletes)

    def is_tied(c: PendingChange) -> bool:
        paths = [p for p in (c.path, c.new_path) if p]
        return (
            c.op == "delete"
            or any(at_or_below(p, gone) for p in paths)
            or (c.op == "rename" and any(has_below(p, ordered) for p in paths))
        )

    marks = [is_tied(c) for c in changes]
    held = [c for c, m in zip(changes, marks, strict=True) if m]
    return held, [c for c, m in zip(changes, marks, strict=True) if not m]


def paths_of(changes: Iterable[PendingChange]) -> list[str]:
    return [p for c in changes for p in (c.path, c.new_path) if p]
