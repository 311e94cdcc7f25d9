"""The state of a mapping gone from the agent's assignment (deleted, or this server taken off it)
is removed once gone for STATE_KEEP_S: mapping ids are never reused, so it stayed for good. A
mapping back within the week takes up its state again; a disabled one keeps it."""

from __future__ import annotations

import os
from pathlib import Path

from relaysync.agent.state_sweep import GONE_MARK, STATE_KEEP_S, states_kept, sweep_states
from relaysync.protocol.messages import Assignment, MappingSpec, TargetSpec

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
    assert (
        sweep_states(tmp_path, {"targets": {1}}, NOW) == []
    )  # 2 and 3 left: marked, nothing removed
    assert not (kept / GONE_MARK).exists() and (deleted / GONE_MARK).exists()
    for state in (deleted, back, source):
        _gone_since(state, NOW - STATE_KEEP_S + 60)
    assert (
        sweep_states(tmp_path, {"targets": {1, 3}}, NOW) == []
    )  # a minute short of the week; 3 is back
    assert not (back / GONE_MARK).exists()
    removed = sweep_states(tmp_path, {"targets": {1, 3}}, NOW + 60)
    assert sorted(removed) == sorted([deleted, source])
    assert not deleted.exists() and not source.exists()
    assert (kept / "manifest.db").exists() and (back / "manifest.db").exists()


def test_only_mapping_state_directories_are_swept(tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "notes.txt").write_text("an operator's")
    (tmp_path / "targets" / "spare").mkdir()
    (tmp_path / "targets" / "\u00b2").mkdir()  # a digit to str.isdigit, not to int()
    assert sweep_states(tmp_path, {}, NOW) == []
    assert sweep_states(tmp_path, {}, NOW + 2 * STATE_KEEP_S) == []
    assert (tmp_path / "targets" / "notes.txt").exists() and (
        tmp_path / "targets" / "spare"
    ).exists()


def _spec(mapping_id: int, source: str, *targets: str) -> MappingSpec:
    return MappingSpec(
        mapping_id=mapping_id,
        name=f"m{mapping_id}",
        source_node=source,
        source_path="/src",
        targets=tuple(TargetSpec(node_id=t, path="/dst") for t in targets),
    )


def test_a_node_keeps_the_state_of_each_part_it_has_and_of_a_mapping_it_failed_in() -> None:
    """Found in review: a failed target is out of its mappings until it recovers (the router
    leaves them out of its assignment); a recovery held for more than a week (manual, or a
    weekly reserved run) found its state removed. Its mappings come as `parked` now. A node
    no longer the source of a mapping it is still a target of lets its source state go."""
    assignment = Assignment(
        epoch=1,
        mappings=(_spec(1, "me", "t"), _spec(2, "s", "me"), _spec(3, "s", "me", "t")),
        peers=(),
        parked=(4,),
    )
    assert states_kept(assignment, "me") == {"sources": {1}, "targets": {2, 3, 4}}
