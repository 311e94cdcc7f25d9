"""The source keeps its signature store tidy: old deltas are pruned on a timer, and the
signatures of deleted or renamed files follow their journal records."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from relaysync.agent import source as source_module
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, TargetSpec


@pytest.fixture
def mapping(tmp_path: Path) -> SourceMapping:
    (tmp_path / "src").mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="s", source_path=str(tmp_path / "src"),
                       targets=(TargetSpec(node_id="t1", path="/t1"),), durability="fast")
    return SourceMapping(spec, tmp_path / "state")


def test_old_deltas_are_pruned_on_a_timer_not_only_when_a_delta_starts(
        mapping: SourceMapping, monkeypatch: pytest.MonkeyPatch) -> None:
    assert mapping.signatures is not None
    old = mapping.signatures.dir / "delta" / "0123.abcd.1-2-3-4.0.delta"
    old.write_bytes(b"x" * 1000)
    past = time.time() - 3600
    os.utime(old, (past, past))
    monkeypatch.setattr(source_module, "PRUNE_EVERY_S", 0.05)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping._prune_deltas)
            with anyio.fail_after(10):
                while old.exists():
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert not old.exists()
