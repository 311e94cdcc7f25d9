"""A damaged file kept for the operator under `<name>.bad`, never over an earlier one, and no
more than MAX_KEPT_FILES of them in one directory.

The job log's spool and the agent's outbox number their segments afresh once none is left, so
a later damaged segment can have the name of one kept before: replacing `<name>.bad` lost the
earlier evidence. A taken name gets a number: `<name>.2.bad`, `<name>.3.bad`... A disk that
keeps damaging segments (failing media, a file system that loses writes) would otherwise fill
the directory with them: past MAX_KEPT_FILES the oldest go, with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_KEPT_NAMES = 1000  # past this many of one name, the oldest number's is replaced
MAX_KEPT_FILES = 10  # `.bad` files kept in one directory; the oldest beyond go


def keep_aside(path: Path) -> Path:
    """Rename `path` to the first free `<name>.bad`, `<name>.N.bad`; return where it went. The
    oldest `.bad` files of its directory past MAX_KEPT_FILES are removed.

    Raises:
        FileNotFoundError: `path` is gone.
    """
    for n in range(1, MAX_KEPT_NAMES + 1):
        kept = path.with_name(f"{path.name}.bad" if n == 1 else f"{path.name}.{n}.bad")
        if not os.path.lexists(kept):
            break
    path.replace(kept)
    _prune(path.parent, kept)
    return kept


def _prune(directory: Path, newest: Path) -> None:
    """Remove the oldest `.bad` files of `directory` (by mtime) past MAX_KEPT_FILES, never
    `newest`. Nothing is raised: a file that cannot be looked at or removed stays."""
    aged: list[tuple[int, str]] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.endswith(".bad") and entry.name != newest.name:
                    try:
                        aged.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
                    except OSError:
                        continue
    except OSError:
        return
    excess = len(aged) + 1 - MAX_KEPT_FILES
    if excess <= 0:
        return
    removed = []
    for _, name in sorted(aged)[:excess]:
        try:
            (directory / name).unlink()
            removed.append(name)
        except OSError:
            continue
    if removed:
        logger.warning(
            "%s: removed %s older damaged files kept aside (%s): at most %s are kept; a disk "
            "that keeps damaging them may be failing",
            directory,
            len(removed),
            ", ".join(removed),
            MAX_KEPT_FILES,
        )
