"""SourceMapping: a source whose state cannot be opened leaves nothing open (the agent retries it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec


def _open_below(directory: Path) -> list[str]:
    """The files this process holds open below `directory`."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


def test_a_source_whose_journal_cannot_be_opened_leaves_its_manifest_closed(
    tmp_path: Path,
) -> None:
    """The agent starts such a source again with backoff: each failed start kept its manifest's
    database open, a descriptor leaked per retry for as long as the state stays broken."""
    (tmp_path / "src").mkdir()
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal").write_text("a file where the journal's directory should be")
    spec = MappingSpec(
        mapping_id=1, name="m", source_node="n", source_path=str(tmp_path / "src"), targets=()
    )
    with pytest.raises(OSError):
        SourceMapping(spec, state)
    assert _open_below(state) == []
