"""The state of a mapping gone from the agent's assignment (deleted, or this server taken off it)
is removed once gone for STATE_KEEP_S: mapping ids are never reused, so it stayed for good. A
mapping back within the week takes up its state again; a disabled one keeps it."""

from __future__ import annotations

import os
from pathlib import Path

from relaysync.agent.state_sweep import GONE_MARK, STATE_KEEP_S, sweep_states

NOW = 1_800_000_000.0


def _state(data_dir: Path, kind: str, mapping_id: int) -> Path:
    state = data_dir / kind / str(mapping_id)
    state.mkdir(parents=True)
    (state / "manifest.db").write_bytes(b"x" * 100)
    return state


def _gone_since(state: Path, at: float) -> None:
    os.utime(state / GONE_MARK, (at, at))


def test_a_state_gone_for_the_keep_time_is_removed_and_one_back_in_time_is_kept(
    tmp_path: Path,
) -> None:
    kept, deleted, back = (_state(tmp_path, "targets", n) for n in (1, 2, 3))
    source = _state(tmp_path, "sources", 2)
    assert sweep_states(tmp_path, {1}, NOW) == []  # 2 and 3 left: marked, nothing removed
    assert not (kept / GONE_MARK).exists() and (deleted / GONE_MARK).exists()
    for state in (deleted, back, source):
        _gone_since(state, NOW - STATE_KEEP_S + 60)
    assert sweep_states(tmp_path, {1, 3}, NOW) == []  # a minute short of the week; 3 is back
    assert not (back / GONE_MARK).exists()
    removed = sweep_states(tmp_path, {1, 3}, NOW + 60)
    assert sorted(removed) == sorted([deleted, source])
    assert not deleted.exists() and not source.exists()
    assert (kept / "manifest.db").exists() and (back / "manifest.db").exists()


def test_only_mapping_state_directories_are_swept(tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "notes.txt").write_text("an operator's")
    (tmp_path / "targets" / "spare").mkdir()
    assert sweep_states(tmp_path, set(), NOW) == []
    assert sweep_states(tmp_path, set(), NOW + 2 * STATE_KEEP_S) == []
    assert (tmp_path / "targets" / "notes.txt").exists() and (
        tmp_path / "targets" / "spare"
    ).exists()
