"""Include/exclude filters: which relative paths of a mapping are replicated."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from relaysync.constants import TEMP_PREFIX
from relaysync.errors import ConfigError

logger = logging.getLogger(__name__)


def _compile(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"bad filter pattern {pattern!r}: {exc}") from exc
    return tuple(compiled)


def is_temp_path(relpath: str) -> bool:
    """Return True if any component of `relpath` is one of our temporary names."""
    return any(part.startswith(TEMP_PREFIX) for part in relpath.split("/"))


class PathFilter:
    """Decides whether a relative POSIX path takes part in replication.

    Patterns are regular expressions applied with `re.search` to the whole relative path.
    Temporary names (TEMP_PREFIX) are never accepted; an exclude match always wins; with a
    non-empty include list a file must match one include, while a directory is accepted unless
    excluded, so that included files below it are still found.

    Args:
        include: regexes a file must match (empty: every file).
        exclude: regexes that reject a file or directory (and so its whole subtree).

    Raises:
        ConfigError: a pattern is not a valid regular expression.
    """

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self._include = _compile(include)
        self._exclude = _compile(exclude)

    def accepts(self, relpath: str, *, is_dir: bool = False) -> bool:
        """Return True if `relpath` (relative, POSIX, "" for the root) is replicated."""
        if relpath == "":
            return True
        if is_temp_path(relpath):
            return False
        if any(p.search(relpath) for p in self._exclude):
            return False
        if is_dir or not self._include:
            return True
        return any(p.search(relpath) for p in self._include)
