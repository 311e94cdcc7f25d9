"""Helpers for recorder tests: events, a model target replaying changes, a real Watcher, polling.

A test drives the ChangeRecorder with events (made by hand, or read from a real Watcher), replays
the changes on a `ModelTarget` and checks two things: the target holds what the source's disk
holds (`disk_state`), and the manifest agrees with the disk (a scan finds nothing), since the
manifest comparisons with targets read the manifest, not the disk.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.changes import PendingChange
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import make_entry, scan_tree
from relaysync.watch.watcher import Watcher

WAIT_S = 10.0  # bound of every poll: generous, the test machine is shared and loaded


def ev(kind: str, path: str, new_path: str = "", is_dir: bool = False) -> FsEvent:
    return FsEvent(kind=kind, path=path, new_path=new_path, is_dir=is_dir)  # type: ignore[arg-type]


def disk_state(root: Path) -> dict[str, tuple[str, bytes]]:
    """What a target must end up with: path -> (kind, content hash or link target hash)."""
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            e = make_entry(root, rel)
            if e is not None:
                out[rel] = (e.kind, e.hash)
    return out


class ModelTarget:
    """A target replaying the change stream: path -> (kind, hash)."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[str, bytes]] = {}

    def _take(self, path: str) -> dict[str, tuple[str, bytes]]:
        taken = {p: v for p, v in self.state.items() if p == path or p.startswith(path + "/")}
        for p in taken:
            del self.state[p]
        return taken

    def apply(self, changes: Sequence[PendingChange]) -> None:
        for c in changes:
            if c.op == "delete":
                self._take(c.path)
            elif c.op == "rename":
                moved = self._take(c.path)
                self._take(c.new_path)
                for p, v in moved.items():
                    self.state[c.new_path + p[len(c.path) :]] = v
            else:
                assert c.entry is not None
                self.state[c.path] = (c.entry.kind, c.entry.hash)


def settle(rec: ChangeRecorder, target: ModelTarget, events: list[FsEvent]) -> list[PendingChange]:
    """Detect, apply and replay every event, as the source agent does (detect stops early)."""
    changes = rec.detect_and_apply(events)
    target.apply(changes)
    return changes


def assert_in_step(root: Path, manifest: Manifest, target: ModelTarget) -> None:
    assert target.state == disk_state(root)
    assert scan_tree(root, manifest, PathFilter()) == []


async def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():
            await anyio.sleep(0.005)


@asynccontextmanager
async def watching(root: Path, flt: PathFilter | None = None) -> AsyncIterator[list[list[FsEvent]]]:
    """Run a real Watcher on `root`; yields the list of the batches it sent so far."""
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
    batches: list[list[FsEvent]] = []

    async def collect() -> None:
        async for batch in receive:
            batches.append(batch)

    async with anyio.create_task_group() as tg:
        await tg.start(Watcher(root, flt or PathFilter()).serve, send)
        tg.start_soon(collect)
        yield batches
        tg.cancel_scope.cancel()
