"""Watcher, how it checks the root's path: a root on a hung network mount (an NFS hard mount,
FUSE) must not freeze the event loop, which the agent's control link and its other mappings
share (the hang is simulated: no hanging mount can be made here); a link switched just as the
root's watch is added is not missed."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import anyio
import pytest
from asyncinotify import Inotify, Mask, Watch
from tests.unit.watch._replay import wait_for
from tests.unit.watch.test_watcher_unmount import releases, switch, watching

from relaysync.watch import _root
from relaysync.watch.filters import PathFilter
from relaysync.watch.watcher import Watcher

pytestmark = pytest.mark.anyio


async def test_a_root_that_does_not_answer_leaves_the_event_loop_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: every 0.5 s, and after every batch, the root was stat'ed on the event loop: on a
    hung mount that call never returns, and the whole agent stopped with it."""
    caplog.set_level(logging.WARNING, logger="relaysync.watch._root")
    monkeypatch.setattr(_root, "ROOT_POLL_S", 0.05)
    monkeypatch.setattr(_root, "ROOT_STAT_TIMEOUT_S", 0.2)
    hung, probes = threading.Event(), []
    hung.set()
    answer = threading.Event()

    def probe(path: Path) -> None:
        probes.append(path)
        if hung.is_set():
            answer.wait(8)

    identity = _root._identity

    def stat_of(path: Path) -> tuple[int, int] | None:  # a stat on the hung mount hangs too
        if hung.is_set():
            answer.wait(8)
        return identity(path)

    root = tmp_path / "root"
    root.mkdir()
    async with watching(root) as (watcher, seen):
        monkeypatch.setattr(_root, "_probe", probe)
        monkeypatch.setattr(_root, "_identity", stat_of)
        began = time.monotonic()
        for _ in range(20):  # the loop is free: 20 ticks of 50 ms come in about 1 s
            await anyio.sleep(0.05)
        assert time.monotonic() - began < 5, "the event loop was blocked"
        await wait_for(lambda: "does not answer" in caplog.text)
        assert caplog.text.count("does not answer") == 1  # once, not at every look
        assert len(probes) == 1  # the hung probe is not joined by more threads
        (root / "a.txt").write_text("written while the root hung")
        await anyio.sleep(0.3)
        hung.clear()
        answer.set()
        await wait_for(lambda: any(e.path == "a.txt" for e in seen))
        await wait_for(lambda: "answers again" in caplog.text)
        assert not watcher.root_lost


async def test_a_root_link_switched_just_after_its_watch_is_added_is_seen_switched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the directory the root's watch is on was taken after the watch was
    added; a link switched in between left the watch on the old release and the new one
    recorded as watched, so the switch was never noticed."""
    old, new, root = releases(tmp_path)
    add_watch = Inotify.add_watch

    def add_then_switch(self: Inotify, path: Path, mask: Mask) -> Watch:
        watch = add_watch(self, path, mask)
        if path == root and root.resolve() == old:
            switch(root, new)
        return watch

    monkeypatch.setattr(Inotify, "add_watch", add_then_switch)
    async with watching(root) as (_, seen):
        await wait_for(lambda: any(e.kind == "rescan" and e.path == "" for e in seen))
        (new / "fresh.txt").write_text("the release now at the root's path")
        await wait_for(lambda: any(e.path == "fresh.txt" for e in seen))


async def test_a_look_while_another_probes_waits_for_that_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: a look (the read loop's after a batch, or the 0.5 s poll's) made while
    the other's probe was on its way took the root as hung at once, however fast it answered:
    a "does not answer" warning, then "answers again", and the root left unchecked."""
    caplog.set_level(logging.WARNING, logger="relaysync.watch._root")
    monkeypatch.setattr(_root, "_probe", lambda path: time.sleep(0.05))  # slow, not hung
    watcher = Watcher(tmp_path, PathFilter())
    answers: list[bool] = []

    async def look() -> None:
        answers.append(await watcher._root_answers())

    async with anyio.create_task_group() as tg:
        tg.start_soon(look)
        tg.start_soon(look)
    assert answers == [True, True]
    assert "does not answer" not in caplog.text


async def test_a_root_missing_when_watching_starts_is_watched_once_it_is_made(
    tmp_path: Path,
) -> None:
    """Found in review: a root that was not there when its watch was to be added was never
    looked at again (nothing was recorded as watched), so a folder made a moment later was
    never watched."""
    root = tmp_path / "not-yet"
    async with watching(root) as (watcher, seen):
        root.mkdir()
        await wait_for(lambda: any(e.kind == "rescan" and e.path == "" for e in seen))
        (root / "a.txt").write_text("made after the watcher started")
        await wait_for(lambda: any(e.path == "a.txt" for e in seen))
        assert not watcher.root_lost


async def test_an_overflow_after_an_unnoticed_switch_drops_the_old_releases_watches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: an inotify overflow read before the 0.5 s look saw a `current` switch
    re-added the root's watch on the new release and took it as the one watched, while the old
    release's watches stayed: its changes (a rollback's `rm -rf`) were reported as the root's."""
    monkeypatch.setattr(_root, "ROOT_POLL_S", 3600.0)  # only the overflow may notice the switch
    old, new, root = releases(tmp_path)
    async with watching(root) as (watcher, seen):
        switch(root, new)
        watcher._overflow()  # as if IN_Q_OVERFLOW had just been read
        # the rescan goes out with the next batch (the removed watches' IN_IGNORED); events
        # read with it are folded into it, so write only once it is out
        await wait_for(lambda: any(e.kind == "rescan" and e.path == "" for e in seen))
        (old / "sub" / "stale.txt").write_text("the old release")
        (new / "sub" / "fresh.txt").write_text("the release now at the root's path")
        await wait_for(lambda: any(e.path == "sub/fresh.txt" for e in seen))
    assert not any(e.path == "sub/stale.txt" for e in seen)


async def test_the_first_listing_of_the_tree_leaves_the_event_loop_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: the watches of the whole tree were added on the event loop when watching started, so a
    tree of many directories (seconds to list) or a root on a hung mount (never) stopped every
    link and the control link of the agent meanwhile. Here the listing waits until a task on
    the event loop has run; on the loop itself it would wait for its 10 s bound."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    listing, loop_ran = threading.Event(), threading.Event()
    waited: list[bool] = []
    subdirs = Watcher._subdirs

    def slow_subdirs(self: Watcher, rel: str) -> list[str]:
        if not rel:
            listing.set()
            waited.append(loop_ran.wait(10))
        return subdirs(self, rel)

    monkeypatch.setattr(Watcher, "_subdirs", slow_subdirs)

    async def tick() -> None:
        await wait_for(listing.is_set)
        loop_ran.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        async with watching(root) as (_, seen):
            (root / "a" / "b" / "x.txt").write_text("below the first listing")
            await wait_for(lambda: any(e.path == "a/b/x.txt" for e in seen))
    assert waited == [True]
