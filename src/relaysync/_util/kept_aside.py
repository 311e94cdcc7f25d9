"""A damaged file kept for the operator under `<name>.bad`, never over an earlier one.

The job log's spool and the agent's outbox number their segments afresh once none is left, so
a later damaged segment can have the name of one kept before: replacing `<name>.bad` lost the
earlier evidence. A taken name gets a number: `<name>.2.bad`, `<name>.3.bad`...
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_KEPT_NAMES = 1000  # past this many of one name, the oldest number's is replaced


def keep_aside(path: Path) -> Path:
    """Rename `path` to the first free `<name>.bad`, `<name>.N.bad`; return where it went.

    Raises:
        FileNotFoundError: `path` is gone.
    """
    for n in range(1, MAX_KEPT_NAMES + 1):
        kept = path.with_name(f"{path.name}.bad" if n == 1 else f"{path.name}.{n}.bad")
        if not os.path.lexists(kept):
            break
    path.replace(kept)
    return kept
