"""The source persists its targets' acks and releases its journal off the event loop, at most
every ACK_FLUSH_S: a burst of acks costs one write, and the last one is never lost."""

from __future__ import annotations

import json
import threading
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from relaysync.agent.source import ACK_FLUSH_S, SourceMapping
from relaysync.protocol.messages import MappingSpec, TargetSpec
from relaysync.watch.changes import PendingChange


@pytest.fixture
def source(tmp_path: Path) -> SourceMapping:
    (tmp_path / "src").mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="s", source_path=str(tmp_path / "src"),
                       targets=(TargetSpec(node_id="t1", path="/t1"), TargetSpec(node_id="t2", path="/t2")),
                       durability="fast")
    mapping = SourceMapping(spec, tmp_path / "state")
    mapping.journal.append([PendingChange(op="delete", path=f"f{i}") for i in range(100)])
    return mapping


def _stored(mapping: SourceMapping) -> dict[str, int]:
    try:
        return dict(json.loads((mapping.state_dir / "acks.json").read_text())["acks"])
    except FileNotFoundError:
        return {}


def test_a_burst_of_acks_is_persisted_once_then_the_journal_released(
        source: SourceMapping, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[dict[str, int]] = []
    release = source._release
    monkeypatch.setattr(source, "_release", lambda acks: (writes.append(acks), release(acks)))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(source._flush_acks)
            for seq in range(1, 51):  # two targets acking batch after batch
                source.on_ack("t1", seq)
                source.on_ack("t2", seq - 1)
            with anyio.fail_after(10):
                while _stored(source) != {"t1": 50, "t2": 49}:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert len(writes) == 1  # 100 acks, one write
    assert source.journal.first_seq == 50  # released up to the slower target
    assert source.backlog() == 100 - 49


def test_an_ack_not_yet_flushed_is_written_when_the_source_stops(source: SourceMapping) -> None:
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(source._flush_acks)
            await anyio.sleep(0)
            source.on_ack("t1", 7)
            source.on_ack("t2", 9)
            tg.cancel_scope.cancel()  # well before ACK_FLUSH_S

    anyio.run(main)
    assert ACK_FLUSH_S > 0 and _stored(source) == {"t1": 7, "t2": 9}
    assert source.journal.first_seq == 8


def test_acks_are_not_persisted_until_every_target_has_acked(
        source: SourceMapping, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[dict[str, int]] = []
    release = source._release
    monkeypatch.setattr(source, "_release", lambda acks: (flushed.append(acks), release(acks)))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(source._flush_acks)
            source.on_ack("t1", 30)
            # negative check, synchronised: the flush of that ack has run (and had to write nothing)
            with anyio.fail_after(10):
                while not flushed:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert _stored(source) == {} and source.journal.first_seq == 1  # t2 may still need it all


def test_a_stop_while_the_flush_waits_for_a_worker_thread_still_writes_the_last_acks(
        source: SourceMapping) -> None:
    """The worker threads are shared (links read files, receivers apply batches): a stop can come
    while the flush waits for one, after it took the acks' change signal."""
    gate = threading.Event()

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1  # this run's loop only
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(anyio.to_thread.run_sync, gate.wait, abandon_on_cancel=True))  # the pool is busy
            tg.start_soon(source._flush_acks)
            await anyio.sleep(0)
            changed = source._acks_changed
            source.on_ack("t1", 7)
            source.on_ack("t2", 9)
            with anyio.fail_after(10):
                while source._acks_changed is changed:  # the flusher has taken the signal
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # the source stops
        gate.set()

    anyio.run(main)
    assert _stored(source) == {"t1": 7, "t2": 9}
    assert source.journal.first_seq == 8
