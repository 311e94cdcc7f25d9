"""Watcher, how it lists and watches a subtree once watching: a directory made or moved into the
tree, and an overflow's whole tree, are listed in a worker thread, so the event loop (which the
agent's control link and its other mappings share) goes on meanwhile; the subtree is watched
before its "rescan" goes out, so the scan finds what was made in it before its watches."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from asyncinotify import Event, Inotify, Mask
from tests.unit.watch._replay import WAIT_S, wait_for
from tests.unit.watch.test_watcher_unmount import watching

from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.watcher import FsEvent, Watcher

pytestmark = pytest.mark.anyio


def _has(seen: list[FsEvent], kind: str, path: str) -> bool:
    return any(e.kind == kind and e.path == path for e in seen)


class SlowListing:
    """Holds the listing of directory `rel` until a task on the event loop has run (`on_loop`):
    on the loop itself, the listing would wait out its WAIT_S bound instead."""

    def __init__(self, rel: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rel = rel
        self.armed = False  # the first listing, when watching starts, goes at once
        self.listing, self.loop_ran = threading.Event(), threading.Event()
        self.waited: list[bool] = []
        subdirs = Watcher._subdirs

        def slow_subdirs(watcher: Watcher, rel: str) -> list[str]:
            if self.armed and rel == self.rel:
                self.listing.set()
                self.waited.append(self.loop_ran.wait(WAIT_S))
            return subdirs(watcher, rel)

        monkeypatch.setattr(Watcher, "_subdirs", slow_subdirs)

    async def on_loop(self, meanwhile: Callable[[], None]) -> None:
        """Once the listing is held, do `meanwhile` on the event loop, then let the listing go."""
        with anyio.fail_after(2 * WAIT_S):
            while not self.listing.is_set():
                await anyio.sleep(0.01)
        meanwhile()
        self.loop_ran.set()


@contextmanager
def overflow_after(name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Have the kernel's queue seem to overflow right after the event of file `name` is read
    (IN_Q_OVERFLOW: no watch, no name), without lowering the kernel-wide queue limit."""
    sync_get = Inotify.sync_get
    injected: list[Event] = []

    def get(ino: Inotify) -> Event | None:
        if injected:
            return injected.pop()
        event = sync_get(ino)
        if event is not None and event.name == Path(name) and Mask.CLOSE_WRITE in event.mask:
            injected.append(Event(None, Mask.Q_OVERFLOW, 0, None))
        return event

    monkeypatch.setattr(Inotify, "sync_get", get)
    yield


@pytest.mark.parametrize("arrives", ["moved in", "made"])
async def test_a_new_directory_is_listed_off_the_event_loop(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch, arrives: str
) -> None:
    """Was: a directory made or moved into the tree had its subtree listed and watched on the
    event loop: for a directory of 5,000 subdirectories the whole agent stood still for about
    0.14 s, and for one on a hung network mount for ever."""
    root, staging = tmp_path / "root", tmp_path / "staging"
    root.mkdir()
    (staging / "big" / "a" / "b").mkdir(parents=True)
    slow = SlowListing("big", monkeypatch)
    seen_early: list[bool] = []
    async with watching(root) as (_, seen):
        slow.armed = True

        def meanwhile() -> None:  # the subtree has its top's watch, not yet its children's
            seen_early.append(_has(seen, "rescan", "big"))
            (root / "big" / "a" / "early.txt").write_text("made before a's watch")

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow.on_loop, meanwhile)
            if arrives == "moved in":
                os.rename(staging / "big", root / "big")
            else:
                (root / "big" / "a" / "b").mkdir(parents=True)
        await wait_for(lambda: _has(seen, "rescan", "big"))
        (root / "big" / "a" / "b" / "late.txt").write_text("made once watched")
        await wait_for(lambda: _has(seen, "write", "big/a/b/late.txt"))
    assert slow.waited == [True]
    assert seen_early == [False]  # the rescan goes out once the subtree is watched
    recorder = ChangeRecorder(root, manifest, PathFilter())
    found = {c.path for c in recorder.detect(list(seen)).changes if c.op == "write"}
    assert {"big/a/early.txt", "big/a/b/late.txt"} <= found


async def test_an_overflow_relists_the_tree_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: an inotify queue overflow re-added the watches of the whole tree on the event loop,
    which a tree of 10^4-10^5 directories held for seconds, every link of the agent with it."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    slow = SlowListing("", monkeypatch)
    seen_early: list[bool] = []
    with overflow_after("trigger", monkeypatch):
        async with watching(root) as (watcher, seen):
            slow.armed = True

            def meanwhile() -> None:
                seen_early.append(_has(seen, "rescan", ""))
                (root / "a" / "c").mkdir()  # made while the tree is listed again

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow.on_loop, meanwhile)
                (root / "trigger").write_text("its event is followed by an overflow")
            # a/c is watched by the listing or, made after it, once its CREATE is read
            await wait_for(lambda: _has(seen, "rescan", "") and "a/c" in watcher._wds)
            (root / "a" / "c" / "x.txt").write_text("below the listing")
            await wait_for(lambda: _has(seen, "write", "a/c/x.txt"))
            assert "a/b" in watcher._wds
    assert slow.waited == [True]
    assert seen_early == [False]
