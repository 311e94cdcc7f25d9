"""Tests for watch.watcher with real inotify on real files; waits poll with a bound."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from tests.unit.watch._replay import WAIT_S, wait_for

from relaysync.constants import TEMP_PREFIX
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.watcher import FsEvent, Watcher

pytestmark = pytest.mark.anyio
BUSY_S = 5  # how long a test keeps the tree busy waiting for a batch (one goes out within ~0.1 s)
QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")


@asynccontextmanager
async def watching(root: Path, flt: PathFilter | None = None) -> AsyncIterator[list[FsEvent]]:
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
    seen: list[FsEvent] = []

    async def collect() -> None:
        async for batch in receive:
            seen.extend(batch)

    async with anyio.create_task_group() as tg:
        await tg.start(Watcher(root, flt or PathFilter()).serve, send)
        tg.start_soon(collect)
        yield seen
        tg.cancel_scope.cancel()


def has(seen: list[FsEvent], kind: str, path: str, new_path: str = "") -> bool:
    return any(e.kind == kind and e.path == path and e.new_path == new_path for e in seen)


async def test_write_reported_once_after_close(tree: Path) -> None:
    async with watching(tree) as seen:
        fd = os.open(tree / "slow", os.O_WRONLY | os.O_CREAT)
        for _ in range(5):
            os.write(fd, b"x" * 1000)
        (tree / "marker").write_text("m")  # events are ordered: any early "slow" event precedes it
        await wait_for(lambda: has(seen, "write", "marker"))
        assert not any(e.path == "slow" for e in seen)
        os.close(fd)
        await wait_for(lambda: has(seen, "write", "slow"))
        (tree / "marker2").write_text("m")
        await wait_for(lambda: has(seen, "write", "marker2"))
    assert [e.kind for e in seen if e.path == "slow"] == ["write"]


async def test_new_tree_found_by_rescan(tree: Path, manifest: Manifest) -> None:
    recorder = ChangeRecorder(tree, manifest, PathFilter())
    wanted = {"a/1", "a/b/2", "a/b/c/3"}

    def found() -> bool:
        return wanted <= {c.path for c in recorder.detect(list(seen)).changes if c.op == "write"}

    async with watching(tree) as seen:
        (tree / "a" / "b" / "c").mkdir(parents=True)
        for p in wanted:
            (tree / p).write_text(p)
        await wait_for(found)
        assert has(seen, "rescan", "a")
        (tree / "a" / "b" / "c" / "4").write_text("later")  # the new dirs are watched too
        await wait_for(lambda: has(seen, "write", "a/b/c/4"))


async def test_dir_move_is_one_event_and_watches_follow(tree: Path) -> None:
    (tree / "d" / "sub").mkdir(parents=True)
    (tree / "d" / "sub" / "x").write_text("x")
    async with watching(tree) as seen:
        os.rename(tree / "d", tree / "e")
        await wait_for(lambda: has(seen, "move", "d", "e"))
        assert seen == [FsEvent(kind="move", path="d", new_path="e", is_dir=True)]
        (tree / "e" / "sub" / "y").write_text("y")
        await wait_for(lambda: has(seen, "write", "e/sub/y"))


async def test_dir_created_and_renamed_before_its_create_is_read_is_watched(tree: Path) -> None:
    # mktemp -d; fill; mv tmp release: nothing awaits in between, so the watcher reads the
    # CREATE of release.tmp only after it is gone
    async with watching(tree) as seen:
        os.mkdir(tree / "release.tmp")
        (tree / "release.tmp" / "index.html").write_text("v1")
        os.rename(tree / "release.tmp", tree / "release")
        await wait_for(lambda: has(seen, "move", "release.tmp", "release"))
        assert has(seen, "rescan", "release")  # what was written before its watch existed
        (tree / "release" / "index.html").write_text("v2")
        await wait_for(lambda: has(seen, "write", "release/index.html"))


async def test_dir_tree_created_and_renamed_before_its_create_is_read_is_watched(
    tree: Path,
) -> None:
    async with watching(tree) as seen:
        os.makedirs(tree / "up.tmp" / "a" / "b")
        os.rename(tree / "up.tmp", tree / "up")
        await wait_for(lambda: has(seen, "move", "up.tmp", "up"))
        (tree / "up" / "a" / "b" / "f").write_text("new file")
        await wait_for(lambda: has(seen, "write", "up/a/b/f"))


async def test_subdir_created_just_before_its_parent_is_renamed_is_watched(tree: Path) -> None:
    async with watching(tree) as seen:
        os.mkdir(tree / "up.tmp")
        await wait_for(lambda: has(seen, "rescan", "up.tmp"))  # watched by now
        os.makedirs(tree / "up.tmp" / "a" / "b")  # their CREATEs are read after the rename
        os.rename(tree / "up.tmp", tree / "up")
        await wait_for(lambda: has(seen, "move", "up.tmp", "up"))
        assert has(seen, "rescan", "up/a")
        (tree / "up" / "a" / "b" / "f").write_text("new file")
        await wait_for(lambda: has(seen, "write", "up/a/b/f"))


async def test_a_file_moved_out_does_not_hold_back_a_busy_tree(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "archive"
    outside.mkdir()
    (tree / "old.log").write_text("x")
    async with watching(tree) as seen:
        os.rename(tree / "old.log", outside / "old.log")  # a MOVED_FROM that nothing pairs
        (tree / "first.html").write_text("must reach the targets while the tree stays busy")
        start = time.monotonic()
        i = 0
        while not seen and time.monotonic() - start < BUSY_S:  # an event every 5 ms, < MOVE_PAIR_S
            (tree / f"busy{i % 50}").write_text(str(i))
            i += 1
            await anyio.sleep(0.005)
        latency_s = time.monotonic() - start
    assert seen, f"nothing delivered in {latency_s:.1f} s of steady writes"
    assert latency_s < BUSY_S / 2
    assert has(seen, "delete", "old.log")


async def test_moves_out_that_never_stop_still_let_batches_go(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "archive"
    outside.mkdir()
    names = [f"rotated{i}" for i in range(BUSY_S * 400)]
    for name in names:
        (tree / name).write_text("x")
    async with watching(tree) as seen:
        start = time.monotonic()
        for (
            name
        ) in names:  # a new unpaired MOVED_FROM every 5 ms: only PAIR_BATCH_MAX_S cuts the batch
            if seen or time.monotonic() - start > BUSY_S:
                break
            os.rename(tree / name, outside / name)
            await anyio.sleep(0.005)
        latency_s = time.monotonic() - start
    assert seen, f"nothing delivered in {latency_s:.1f} s of moves out"
    assert latency_s < BUSY_S / 2


async def test_names_not_utf8_are_not_reported_until_renamed(tree: Path) -> None:
    bad = os.fsencode(tree) + b"/caf\xe9.html"
    async with watching(tree) as seen:
        with open(bad, "w") as f:
            f.write("x")
        os.mkdir(os.fsencode(tree) + b"/old\xe9")
        (tree / "marker").write_text("m")
        await wait_for(lambda: has(seen, "write", "marker"))
        assert [e.path for e in seen] == ["marker"]
        os.rename(bad, tree / "cafe.html")  # what the warning asks for
        await wait_for(lambda: has(seen, "rescan", "cafe.html"))


async def test_move_out_is_delete_and_unwatched(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree / "d").mkdir()
    (tree / "f").write_text("f")
    async with watching(tree) as seen:
        os.rename(tree / "f", outside / "f")
        os.rename(tree / "d", outside / "d")
        await wait_for(lambda: has(seen, "delete", "d"))
        assert has(seen, "delete", "f")
        (outside / "d" / "z").write_text("not ours")
        (tree / "marker").write_text("m")
        await wait_for(lambda: has(seen, "write", "marker"))
        assert not any("z" in e.path for e in seen)


async def test_move_in_is_rescan(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "g").write_text("g")
    async with watching(tree) as seen:
        os.rename(outside / "g", tree / "g")
        os.rename(outside / "d", tree / "d")
        await wait_for(lambda: has(seen, "rescan", "g") and has(seen, "rescan", "d"))
        (tree / "d" / "new").write_text("n")
        await wait_for(lambda: has(seen, "write", "d/new"))


async def test_chmod_symlink_delete(tree: Path) -> None:
    (tree / "f").write_text("f")
    async with watching(tree) as seen:
        os.chmod(tree / "f", 0o600)
        await wait_for(lambda: has(seen, "attr", "f"))
        os.symlink("f", tree / "link")
        await wait_for(lambda: has(seen, "symlink", "link"))
        (tree / "f").unlink()
        await wait_for(lambda: has(seen, "delete", "f"))


async def test_temp_names_and_filtered_paths_ignored(tree: Path) -> None:
    flt = PathFilter(exclude=[r"\.log$"])
    async with watching(tree, flt) as seen:
        tmp = tree / f"{TEMP_PREFIX}x.tmp"
        tmp.write_text("x")
        (tree / "noise.log").write_text("x")
        os.rename(tmp, tree / "x")
        await wait_for(lambda: has(seen, "rescan", "x"))
        assert not any(TEMP_PREFIX in e.path or e.path.endswith(".log") for e in seen)


@pytest.fixture
def small_queue() -> object:
    """Lower the kernel's per-instance queue; only inotify instances created meanwhile use it."""
    saved = QUEUE_LIMIT.read_text()
    try:
        QUEUE_LIMIT.write_text("64")
    except OSError:
        pytest.skip("cannot change fs.inotify.max_queued_events here")

    def restore() -> None:
        QUEUE_LIMIT.write_text(saved)

    yield restore
    restore()


@pytest.mark.serial
async def test_overflow_becomes_full_rescan(tree: Path, small_queue: Callable[[], None]) -> None:
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](0)
    async with anyio.create_task_group() as tg:
        await tg.start(Watcher(tree, PathFilter()).serve, send)
        small_queue()  # the watcher's instance keeps 64; restore the global value at once
        (tree / "first").write_text("blocks the watcher's send: nobody reads yet")
        for i in range(1000):
            (tree / f"f{i}").write_text("x")
        seen: list[FsEvent] = []
        with anyio.fail_after(WAIT_S):
            while not has(seen, "rescan", ""):
                seen.extend(await receive.receive())
        tg.cancel_scope.cancel()


def inotify_fds() -> set[int]:
    """This process's open inotify descriptors (other fds come and go with other tests' GC)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                found.add(int(name))
        except OSError:  # closed between listdir and readlink
            continue
    return found


async def test_inotify_fd_closed_on_exit(tree: Path) -> None:
    before = inotify_fds()
    async with watching(tree):
        opened = inotify_fds() - before
        assert opened
    assert not opened & inotify_fds()


def test_truncate_without_close_write_is_reported(tmp_path: Path) -> None:
    """truncate(2) makes no CLOSE_WRITE; the file is reported once MODIFY events go quiet, as
    "modify": not as closed (a writer may only have paused; the source asks)."""
    (tmp_path / "t.txt").write_text("some content")

    async def main() -> list[FsEvent]:
        send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
        watcher = Watcher(tmp_path, PathFilter())
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.serve, send)
            os.truncate(tmp_path / "t.txt", 4)
            with anyio.fail_after(10):
                events = await receive.receive()
            tg.cancel_scope.cancel()
        return events

    events = anyio.run(main)
    assert [(e.kind, e.path) for e in events] == [("modify", "t.txt")]


async def test_a_dir_rename_at_a_full_batchs_edge_stays_a_move(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CREATE x, CLOSE_WRITE x, MOVED_FROM d | MOVED_TO e: with the batch full after the
    MOVED_FROM, the batch was cut there, d became a delete and e a rescan (every target deleted
    the directory and got it all again; a large one tripped the mass-delete guard)."""
    from relaysync.watch import watcher

    (tree / "d").mkdir()
    (tree / "d" / "f").write_bytes(b"x")
    monkeypatch.setattr(watcher, "BATCH_MAX_EVENTS", 3)
    async with watching(tree) as seen:
        (tree / "x").write_bytes(b"")  # all queued in the kernel before the watcher reads
        (tree / "d").rename(tree / "e")
        await wait_for(lambda: any("e" in (ev.path, ev.new_path) for ev in seen))
    assert has(seen, "move", "d", "e") and not has(seen, "delete", "d"), seen
