"""The agent's own check of the folders its assignment names (defence in depth).

The master refuses system folders and same-server folders that contain each other
(master/store/_folders.py), but an agent does not trust that alone: a master with an older
release, a store edited by hand, or a symlink on this server can still point a mapping at
/etc or at the agent's own journals. Before it opens a folder, the agent refuses:

- a system folder (relaysync/_util/folders.py), by its path and by what its symlinks resolve to;
- a folder that contains its data directory or lies inside it (journals, manifests, its key);
- with `allowed_roots` set (agent config, comma-separated), a folder outside every one of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from relaysync._util.folders import normalise, overlap, system_folder, within
from relaysync.errors import ConfigError, FolderRefused


def parse_roots(text: str) -> tuple[str, ...]:
    """Return the folders of a comma-separated `allowed_roots` ("" = no restriction).

    Raises:
        ConfigError: a root that is not an absolute path.
    """
    roots = tuple(r.strip() for r in text.split(",") if r.strip())
    for root in roots:
        if not root.startswith("/") or ".." in root.split("/"):
            raise ConfigError(f"allowed_roots: {root!r} must be an absolute path without '..'")
    return tuple(normalise(r) for r in roots)


def check_folder(
    path: str, *, role: str, mapping_id: int, data_dir: Path, allowed_roots: tuple[str, ...] = ()
) -> None:
    """Refuse a folder this agent must not replicate from or into.

    Args:
        path: the folder as the assignment names it (absolute).
        role: "source" or "target", for the message.

    Raises:
        FolderRefused: naming the folder and the rule.
    """
    named = normalise(path)
    real = normalise(os.path.realpath(named))  # what it is on this server, through symlinks
    data = normalise(os.path.realpath(data_dir))
    for candidate in dict.fromkeys((named, real)):
        reason = system_folder(candidate)
        if reason:
            raise FolderRefused(role, path, mapping_id, reason)
        if overlap(candidate, data):
            raise FolderRefused(
                role,
                path,
                mapping_id,
                f"{candidate} and this agent's data directory {data} contain each other",
            )
        if allowed_roots and not any(within(candidate, root) for root in allowed_roots):
            raise FolderRefused(
                role,
                path,
                mapping_id,
                f"{candidate} is outside allowed_roots ({', '.join(allowed_roots)})",
            )
