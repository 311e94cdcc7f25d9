"""A set of relative paths that finds those at or below a path without a walk of all of them."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator


class PathIndex:
    """Relative paths ("" is the root, above every path). `at_or_below` costs O(log n + found)
    once sorted: the paths below `top` are those from `top + "/"` on that start with it, one run
    of the sorted list. It is sorted again (lazily) after a change, so a burst of lookups between
    changes (an ATTRIB storm, `chmod -R`) is not O(paths x lookups)."""

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._sorted: list[str] = []
        self._stale = False

    def __contains__(self, path: str) -> bool:
        return path in self._paths

    def __len__(self) -> int:
        return len(self._paths)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ordered())

    def add(self, path: str) -> None:
        if path not in self._paths:
            self._paths.add(path)
            self._stale = True

    def discard(self, path: str) -> None:
        if path in self._paths:
            self._paths.remove(path)
            self._stale = True

    def at_or_below(self, top: str) -> list[str]:
        """The paths that are `top` or below it, sorted (parents before their children)."""
        ordered = self._ordered()
        if not top:
            return list(ordered)
        prefix = top + "/"
        found = [top] if top in self._paths else []
        i = bisect_left(ordered, prefix)
        while i < len(ordered) and ordered[i].startswith(prefix):
            found.append(ordered[i])
            i += 1
        return found

    def _ordered(self) -> list[str]:
        if self._stale:
            self._sorted, self._stale = sorted(self._paths), False
        return self._sorted
