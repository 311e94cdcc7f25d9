"""The source persists its targets' acks and releases its journal off the event loop, at most
every ACK_FLUSH_S: a burst of acks costs one write, and the last one is never lost. A target's
acks speak for itself and the targets below it in the routing table only, and only move forward,
but for its own word when its session opens (it may have lost a tail)."""

from __future__ import annotations

import json
import threading
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest

from relaysync.agent.source import ACK_FLUSH_S, SourceMapping
from relaysync.protocol.messages import MappingSpec, MappingState, NodeMark, RouteHop, TargetSpec
from relaysync.transfer._link_session import _Session
from relaysync.transfer.ops import SendOptions
from relaysync.transfer.sender import TargetLink
from relaysync.watch.changes import PendingChange


@pytest.fixture
def source(tmp_path: Path) -> SourceMapping:
    (tmp_path / "src").mkdir()
    spec = MappingSpec(
        mapping_id=1,
        name="m",
        source_node="s",
        source_path=str(tmp_path / "src"),
        targets=(TargetSpec(node_id="t1", path="/t1"), TargetSpec(node_id="t2", path="/t2")),
        durability="fast",
    )
    mapping = SourceMapping(spec, tmp_path / "state")
    mapping.journal.append([PendingChange(op="delete", path=f"f{i}") for i in range(100)])
    return mapping


def _stored(mapping: SourceMapping) -> dict[str, int]:
    try:
        return dict(json.loads((mapping.state_dir / "acks.json").read_text())["acks"])
    except FileNotFoundError:
        return {}


def test_a_burst_of_acks_is_persisted_once_then_the_journal_released(
    source: SourceMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    source: SourceMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    source: SourceMapping,
) -> None:
    """The worker threads are shared (links read files, receivers apply batches): a stop can come
    while the flush waits for one, after it took the acks' change signal."""
    gate = threading.Event()

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1  # this run's loop only
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                partial(anyio.to_thread.run_sync, gate.wait, abandon_on_cancel=True)
            )  # the pool is busy
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


def _session_to(source: SourceMapping, node_id: str) -> _Session:
    link = SimpleNamespace(
        source=source,
        target=SimpleNamespace(node_id=node_id),
        failures=0,
        options=SendOptions(),
    )
    return _Session(link, framed=None)  # type: ignore[arg-type]


def test_a_leaf_target_cannot_release_the_journal_another_target_still_needs(
    source: SourceMapping,
) -> None:
    async def main() -> None:
        # A star: t1 relays for nobody, yet claims t2 committed 100 too; t2 never acked.
        _session_to(source, "t1")._on_ack(100, [NodeMark(node_id="t2", watermark=100)])

    anyio.run(main)
    source._release(dict(source._acks))
    assert source._acks == {"t1": 100}
    assert source.journal.first_seq == 1, "records t2 never acknowledged were released"


def test_a_leaf_target_cannot_move_another_targets_ack_back(source: SourceMapping) -> None:
    async def main() -> None:
        _session_to(source, "t2")._on_ack(100)
        _session_to(source, "t1")._on_ack(100, [NodeMark(node_id="t2", watermark=0)])

    anyio.run(main)
    assert source._acks["t2"] == 100


def test_a_relay_speaks_for_the_targets_below_it_only(source: SourceMapping) -> None:
    # s -> t1 -> t3 -> t4, and s -> t2: t1 relays for t3 and (through t3) t4, not for t2.
    routes = (
        RouteHop(parent="s", child="t1"),
        RouteHop(parent="t1", child="t3"),
        RouteHop(parent="t3", child="t4"),
        RouteHop(parent="s", child="t2"),
    )
    targets = tuple(TargetSpec(node_id=f"t{n}", path=f"/t{n}") for n in range(1, 5))
    source.spec = msgspec.structs.replace(source.spec, routes=routes, targets=targets)
    marks = [NodeMark(node_id=n, watermark=90) for n in ("t2", "t3", "t4", "t1", "s", "elsewhere")]

    async def main() -> None:
        _session_to(source, "t1")._on_ack(100, marks)
        _session_to(source, "t3")._on_ack(
            95, [NodeMark(node_id="t1", watermark=100)]
        )  # not its parent's

    anyio.run(main)
    assert source._acks == {"t1": 100, "t3": 95, "t4": 90}


def test_acks_only_move_forward(source: SourceMapping) -> None:
    source.on_ack("t1", 60)
    source.on_ack("t1", 40)  # a relay's older report of t1, late
    assert source._acks["t1"] == 60


def test_a_target_that_lost_a_tail_keeps_the_journal_it_replays(source: SourceMapping) -> None:
    source.on_ack("t1", 80)
    source.on_ack("t2", 100)
    source._release(dict(source._acks))
    assert source.journal.first_seq == 81
    source.on_open("t2", 90)  # t2 comes back at 90 (a machine crash in fast durability)
    source.on_ack("t1", 100)
    source._release(dict(source._acks))
    assert source._acks == {"t1": 100, "t2": 90}
    assert source.journal.first_seq == 91  # 91..100 are still there for t2's replay


def test_a_link_takes_its_targets_watermark_when_the_session_opens() -> None:
    opened: list[tuple[str, int]] = []

    class Stop(Exception):
        pass

    def on_open(node: str, watermark: int) -> None:
        opened.append((node, watermark))
        raise Stop  # before the session's catch-up, which this test has no target for

    link: Any = object.__new__(TargetLink)
    link.source = SimpleNamespace(journal=None, on_open=on_open)
    link.target = SimpleNamespace(node_id="t1")
    session = SimpleNamespace(acked=0, sent_upto=0)
    with pytest.raises(Stop):
        anyio.run(
            link._stream, session, MappingState(mapping_id=1, watermark=42, root_hash=b""), None
        )
    assert opened == [("t1", 42)] and session.acked == 42
