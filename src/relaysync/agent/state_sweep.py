"""The state of mappings this agent no longer serves, removed once gone for STATE_KEEP_S.

A mapping's state here (`data/sources/<id>`: its journal, manifest and signatures;
`data/targets/<id>`: its manifest, a relay's spool) stays while this node has that part in the
mapping (its source; a target, a relay, or a failed target waiting to recover: `parked`),
enabled or not. One it no longer has (the mapping deleted, this server taken off it, another
source chosen) is marked gone, and its state removed once it has been gone for STATE_KEEP_S: mapping ids are never reused,
so a deleted mapping's state stayed for good (a manifest of a million files is hundreds of MB),
while a mapping given back within the week (a target re-added, a source moved away and back)
takes up its state again, with no full comparison. A state the agent cannot remove is logged and
tried again at the next assignment; the tree a target holds is never touched, only the state.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

from relaysync.protocol.messages import Assignment

logger = logging.getLogger(__name__)

STATE_KEEP_S = 7 * 86_400.0  # how long the state of a mapping gone from the assignment is kept
GONE_MARK = ".gone"  # in a mapping's state directory: its mtime is when the mapping left
STATE_KINDS = ("sources", "targets")


def states_kept(assignment: Assignment, node_id: str) -> dict[str, set[int]]:
    """The mappings whose state this node keeps, by kind: those it is the source of; those it
    is otherwise part of (a target, a relay) or a failed target of."""
    sources = {m.mapping_id for m in assignment.mappings if m.source_node == node_id}
    others = {m.mapping_id for m in assignment.mappings if m.source_node != node_id}
    return {"sources": sources, "targets": others | set(assignment.parked)}


def sweep_states(data_dir: Path, kept: Mapping[str, Collection[int]], now: float) -> list[Path]:
    """Mark the state directories of mappings not `kept` (by kind) gone, unmark those kept;
    remove those gone for STATE_KEEP_S at `now` (unix time); return what was removed."""
    removed: list[Path] = []
    for kind in STATE_KINDS:
        try:
            entries = list(os.scandir(data_dir / kind))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not _is_id(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            state, mark = Path(entry.path), Path(entry.path) / GONE_MARK
            try:
                if int(entry.name) in kept.get(kind, ()):
                    mark.unlink(missing_ok=True)
                elif not mark.exists():
                    mark.touch()
                elif now - mark.stat().st_mtime >= STATE_KEEP_S:
                    shutil.rmtree(state)
                    removed.append(state)
                    logger.info(
                        "removed the state of mapping %s (%s), gone from this agent's"
                        " assignment for %.0f days",
                        entry.name,
                        kind,
                        STATE_KEEP_S / 86_400,
                    )
            except OSError as exc:
                logger.warning(
                    "state of mapping %s (%s) not swept, tried again at the next assignment: %s",
                    entry.name,
                    kind,
                    exc,
                )
    return removed


def _is_id(name: str) -> bool:
    return name.isascii() and name.isdigit()  # ("²".isdigit(), and int() refuses it)
