"""The mass-delete guard judges the deletes of recent batches together, not each batch alone.

A real `rm -rf` in another process reaches the source in several watcher batches; judged one by
one against the folder as the earlier ones left it, all but the last went out.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from relaysync.agent import _delete_runs
from relaysync.agent._delete_runs import GUARD_MIN_DELETES
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, MassDeleteHeld
from relaysync.watch.watcher import FsEvent

OLD_NS = 10**18  # long cooled down: a scan journals such a file at once
WAIT_S = 60.0  # bound of every poll: the test machine is shared and loaded


def _mapping(
    tmp_path: Path, dirs: int, files: int
) -> tuple[SourceMapping, Path, list[MassDeleteHeld]]:
    root = tmp_path / "src"
    root.mkdir()
    for d in range(dirs):
        (root / f"d{d}").mkdir()
        for i in range(files):
            path = root / f"d{d}" / f"{i}.txt"
            path.write_text(str(i))
            os.utime(path, ns=(OLD_NS, OLD_NS))
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    mapping = SourceMapping(spec, tmp_path / "state")
    alarms: list[MassDeleteHeld] = []
    mapping.on_guard = alarms.append
    return mapping, root, alarms


def _deletes(mapping: SourceMapping, after: int) -> list[str]:
    return [r.path for r in mapping.journal.read(after, limit=10**6) if r.op == "delete"]


async def _wait(condition: Callable[[], object], what: str) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.01)


def _rm_events(d: int, files: range, *, with_dir: bool) -> list[FsEvent]:
    """What the watcher reports for (part of) `rm -rf d<d>`: each file, then its directory."""
    events = [FsEvent(kind="delete", path=f"d{d}/{i}.txt") for i in files]
    if with_dir:
        events.append(FsEvent(kind="delete", path=f"d{d}", is_dir=True))
    return events


def test_an_rm_rf_reported_in_several_batches_is_held_whole(tmp_path: Path) -> None:
    """Found in review: each batch was judged alone, against the folder the earlier batches
    left. `rm -rf` of 488 entries in three batches (30, 92 and 366 deletes): the first two went
    out, 122 entries. Now the deletes of a run count together, and once they pass
    GUARD_MIN_DELETES they are deferred until they are judged: only the first 30 go."""
    mapping, root, alarms = _mapping(tmp_path, dirs=8, files=60)
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](16)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        subprocess.run(["rm", "-rf", *(str(root / f"d{d}") for d in range(8))], check=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping._consume, receive)
            await send.send(_rm_events(0, range(30), with_dir=False))
            await _wait(lambda: len(_deletes(mapping, head)) == 30, "the first batch journaled")
            await send.send(
                _rm_events(0, range(30, 60), with_dir=True)
                + _rm_events(1, range(60), with_dir=True)
            )
            await _wait(lambda: send.statistics().current_buffer_used == 0, "batch 2 taken")
            await send.send(
                [e for d in range(2, 8) for e in _rm_events(d, range(60), with_dir=True)]
            )
            await _wait(lambda: alarms, "the alarm")
            send.close()
        assert len(_deletes(mapping, head)) == 30

    try:
        anyio.run(main)
        assert len(alarms) == 1
    finally:
        mapping.close()


def test_deletes_short_of_a_mass_delete_go_after_a_short_settle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few deletes go at once; a batch of GUARD_MIN_DELETES or more that is no mass delete
    (a deploy's old release directory) is deferred, waits for its run to end (no delete for
    GUARD_WINDOW_S), and goes unasked."""
    mapping, root, alarms = _mapping(tmp_path, dirs=8, files=60)
    monkeypatch.setattr(_delete_runs, "GUARD_WINDOW_S", 3600.0)  # a few never wait it
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](16)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping._consume, receive)
            for i in range(5):
                (root / "d0" / f"{i}.txt").unlink()
            await send.send(_rm_events(0, range(5), with_dir=False))
            await _wait(lambda: len(_deletes(mapping, head)) == 5, "the few deletes journaled")
            monkeypatch.setattr(_delete_runs, "GUARD_WINDOW_S", 0.5)
            subprocess.run(["rm", "-rf", str(root / "d1"), str(root / "d2")], check=True)
            await send.send(
                _rm_events(1, range(60), with_dir=True) + _rm_events(2, range(60), with_dir=True)
            )
            await _wait(lambda: len(_deletes(mapping, head)) > 5, "the release deletes journaled")
            send.close()
        # the rescan that releases them finds each directory gone: one delete of its tree
        assert set(_deletes(mapping, head)) == {f"d0/{i}.txt" for i in range(5)} | {"d1", "d2"}

    try:
        anyio.run(main)
        assert alarms == []
    finally:
        mapping.close()


def test_a_real_rm_rf_in_another_process_is_held(tmp_path: Path) -> None:
    """Found in review: `rm -rf` of a folder's 16,008 entries, run in another process, reached
    the source in batches of 162, 7842 and 8004 deletes; the first two went out (8004 entries
    deleted on the targets), only the last was held. Now at most a few go before the hold,
    with the guard's own window: on a loaded CI machine the rm took longer than it (6,184
    deletes went out), which a delete run no longer minds (test_mass_delete_run.py)."""
    mapping, root, alarms = _mapping(tmp_path, dirs=8, files=2000)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])  # what serve() starts with
        assert mapping.manifest.count() == 8 + 8 * 2000
        head = mapping.journal.last_seq
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            # the watcher reads on while it runs: the event loop is not blocked
            await anyio.run_process(["rm", "-rf", *(str(root / f"d{d}") for d in range(8))])
            await _wait(lambda: alarms, "the alarm")
            journaled = len(_deletes(mapping, head))
            tg.cancel_scope.cancel()
        assert journaled < GUARD_MIN_DELETES, f"{journaled} deletes went out before the hold"

    try:
        anyio.run(main)
        assert len(alarms) == 1
    finally:
        mapping.close()
