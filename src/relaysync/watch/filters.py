"""Include/exclude filters: which relative paths of a mapping are replicated."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path

from relaysync.constants import MAX_PATH_BYTES, TEMP_PREFIX
from relaysync.errors import ConfigError, LinkTargetNotUtf8, NameNotUtf8, PathTooDeep

logger = logging.getLogger(__name__)

MAX_NAME_WARNINGS = (
    100  # names warned about one by one per filter; a tree full of them says so once
)


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
    if TEMP_PREFIX not in relpath:  # the common case, one search in C (a scan asks per file)
        return False
    return relpath.startswith(TEMP_PREFIX) or f"/{TEMP_PREFIX}" in relpath


def encodes_utf8(text: str) -> bool:
    """Return True if `text` encodes as UTF-8.

    A name read from disk that is not valid UTF-8 comes as a str with lone surrogates
    (surrogateescape); msgpack (journal, wire) and SQLite (manifest) refuse to encode it.
    """
    if text.isascii():  # the common case, without building the encoded copy
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with each byte that is not valid UTF-8 written as \\xNN, safe to log."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class PathFilter:
    """Decides whether a relative POSIX path takes part in replication.

    Patterns are regular expressions applied with `re.search` to the whole relative path.
    Temporary names (TEMP_PREFIX) are never accepted; an exclude match always wins; with a
    non-empty include list a file must match one include, while a directory is accepted unless
    excluded, so that included files below it are still found. A path that is not valid UTF-8
    is never accepted either (the journal, the manifest and the wire hold UTF-8 only): it is
    refused with a warning naming the file, once per path; so is one over MAX_PATH_BYTES (what
    the wire carries: a target would refuse the message, and the link with it, for ever).

    Args:
        include: regexes a file must match (empty: every file).
        exclude: regexes that reject a file or directory (and so its whole subtree).
        root: the folder the paths are relative to, named in warnings.

    Raises:
        ConfigError: a pattern is not a valid regular expression.
    """

    def __init__(
        self, include: Sequence[str] = (), exclude: Sequence[str] = (), *, root: Path | str = ""
    ) -> None:
        self._include = _compile(include)
        self._exclude = _compile(exclude)
        self._root = str(root)
        # Paths already warned about. The watcher (event loop) and the scanner (worker threads)
        # share the filter, hence the lock.
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    def accepts(self, relpath: str, *, is_dir: bool = False) -> bool:
        """Return True if `relpath` (relative, POSIX, "" for the root) is replicated."""
        if relpath == "":
            return True
        if is_temp_path(relpath):
            return False
        if not self.utf8_path(relpath, is_dir=is_dir):
            return False
        if len(relpath) > MAX_PATH_BYTES // 4 and not self._short_enough(relpath, is_dir):
            return False
        if self._exclude and any(p.search(relpath) for p in self._exclude):
            return False
        if is_dir or not self._include:
            return True
        return any(p.search(relpath) for p in self._include)

    def utf8_path(self, relpath: str, *, is_dir: bool = False) -> bool:
        """Return True if `relpath` encodes as UTF-8; warn once per path when it does not."""
        if encodes_utf8(relpath):
            return True
        below = " (nor anything below it)" if is_dir else ""
        self._warn_once(relpath, NameNotUtf8(self._full(relpath), below))
        return False

    def _short_enough(self, relpath: str, is_dir: bool) -> bool:
        """Whether `relpath` fits on the wire (MAX_PATH_BYTES); warn once per path when not."""
        if len(relpath.encode("utf-8")) <= MAX_PATH_BYTES:
            return True
        below = " (nor anything below it)" if is_dir else ""
        self._warn_once(relpath, PathTooDeep(self._full(relpath), MAX_PATH_BYTES, below))
        return False

    def utf8_link_target(self, relpath: str, target: str) -> bool:
        """Return True if a symlink's `target` encodes as UTF-8; warn once per link when not."""
        if encodes_utf8(target):
            return True
        self._warn_once(relpath, LinkTargetNotUtf8(self._full(relpath)))
        return False

    def _full(self, relpath: str) -> str:
        return printable(f"{self._root}/{relpath}" if self._root else relpath)

    def _warn_once(self, relpath: str, problem: Exception) -> None:
        with self._warned_lock:
            if relpath in self._warned:
                return
            self._warned.add(relpath)
            count = len(self._warned)
        if count <= MAX_NAME_WARNINGS:
            logger.warning("%s", problem)
        if count == MAX_NAME_WARNINGS:
            logger.warning(
                "%s paths under %s are not replicated (not UTF-8, or too deep); further ones are "
                "logged at debug level",
                count,
                printable(self._root or "."),
            )
        elif count > MAX_NAME_WARNINGS:
            logger.debug("%s", problem)
