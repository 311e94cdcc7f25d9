"""A directory the watcher cannot watch though it is there (inotify_add_watch fails with EACCES
on a directory of mode 000, or below one of mode 0600, to an agent without CAP_DAC_OVERRIDE;
or EMFILE, EIO): the watcher does not stop, says so, and watches and rescans it once it can
(on a chmod of it or above it at once, else at its next retry), so changes in it are seen."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from asyncinotify import Inotify
from tests.unit.agent.test_source_unreadable import _NO_DAC, _no_dac_works
from tests.unit.watch._replay import wait_for
from tests.unit.watch.test_watcher import has

from relaysync.watch.filters import PathFilter
from relaysync.watch.watcher import FsEvent, Watcher

BOUND_S = 30.0

# A watcher in a child without the capabilities that let root read any directory.
_WATCH = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import anyio
    from relaysync.watch.filters import PathFilter
    from relaysync.watch.watcher import FsEvent, Watcher

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
        watcher = Watcher(Path(sys.argv[1]), PathFilter(), unwatched_scan_interval_s=3600)
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.serve, send)
            print("ready", flush=True)
            async for batch in receive:
                for e in batch:
                    print(e.kind, e.path, flush=True)

    anyio.run(main)
    """
)


class _Child:
    """A process whose output lines are collected by a thread, to wait on with a bound."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        for stream, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line.rstrip("\n"))

    def wait(self, what: Callable[[], bool], label: str) -> None:
        deadline = time.monotonic() + BOUND_S
        while not what():
            assert self.proc.poll() is None, f"watcher ended: {self.errors}"
            assert time.monotonic() < deadline, f"no {label}: {self.lines} {self.errors}"
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def _warned(child: _Child, name: str) -> bool:
    return any(f"cannot watch directory {name} " in line for line in child.errors)


@pytest.fixture
def restore_modes(tmp_path: Path) -> Iterator[None]:
    yield
    for dirpath, dirnames, _ in os.walk(tmp_path):  # so that pytest can remove the tree
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)


def test_directories_that_cannot_be_watched_are_watched_once_chmodded(
    tmp_path: Path, restore_modes: None
) -> None:
    """Before the fix, a warning and no watch for good: after the chmod back only "attr d" came,
    and the writes in d (or in p/c) were never seen."""
    if not _no_dac_works(tmp_path):
        pytest.skip("setpriv cannot drop CAP_DAC_OVERRIDE here")
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "p" / "c").mkdir(parents=True)
    (root / "d").chmod(0)  # not readable: no watch
    (root / "p").chmod(0o600)  # readable, not searchable: watched, its subdirectories not
    child = _Child([*_NO_DAC, sys.executable, "-c", _WATCH, str(root)])
    try:
        child.wait(lambda: "ready" in child.lines, "start")
        # its warnings come on stderr, read by another thread than "ready": waited for too
        child.wait(lambda: _warned(child, "d"), "the warning of d")
        child.wait(lambda: _warned(child, "p/c"), "the warning of p/c")
        (root / "x").write_text("x")
        child.wait(lambda: "write x" in child.lines, "write x")

        (root / "d").chmod(0o755)
        child.wait(lambda: "rescan d" in child.lines, "rescan d after its chmod")
        (root / "d" / "f").write_text("f")
        child.wait(lambda: "write d/f" in child.lines, "write d/f: d watched")

        (root / "p").chmod(0o755)
        child.wait(lambda: "rescan p/c" in child.lines, "rescan p/c after a chmod of p")
        (root / "p" / "c" / "g").write_text("g")
        child.wait(lambda: "write p/c/g" in child.lines, "write p/c/g: p/c watched")
    finally:
        child.stop()


@pytest.mark.anyio
@pytest.mark.parametrize("code", [errno.EACCES, errno.EMFILE])
async def test_a_directory_that_could_not_be_watched_is_retried(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    """Made watchable without an event on it (a group, an ACL, descriptors freed): watched and
    rescanned at the next retry. Before the fix it stayed unwatched for good."""
    (tree / "d").mkdir()
    locked = True
    refused = 0
    real = Inotify.add_watch

    def add_watch(self: Inotify, path: Path, mask: object) -> object:
        nonlocal refused
        if locked and Path(path).name == "d":
            refused += 1
            raise OSError(code, os.strerror(code), str(path))
        return real(self, path, mask)  # type: ignore[arg-type]

    monkeypatch.setattr(Inotify, "add_watch", add_watch)
    caplog.set_level(logging.WARNING, logger="relaysync.watch.watcher")
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
    seen: list[FsEvent] = []

    async def collect() -> None:
        async for batch in receive:
            seen.extend(batch)

    watcher = Watcher(tree, PathFilter(), unwatched_scan_interval_s=0.2)
    async with anyio.create_task_group() as tg:
        await tg.start(watcher.serve, send)
        tg.start_soon(collect)
        assert "cannot watch directory d in source" in caplog.text
        await wait_for(lambda: refused >= 3)  # retries that fail again: no new warning, no rescan
        assert caplog.text.count("cannot watch directory d") == 1
        assert not has(seen, "rescan", "d")
        locked = False
        await wait_for(lambda: has(seen, "rescan", "d"))
        (tree / "d" / "f").write_text("f")
        await wait_for(lambda: has(seen, "write", "d/f"))
        tg.cancel_scope.cancel()
