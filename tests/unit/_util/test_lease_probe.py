"""`open_for_writing`: whether a hot file is still open for writing, told by a read lease taken
and dropped in one C call with the GIL released (`_leaseprobe`).

Found in review (notes/s24/watchfix2-review.md #2): the lease was dropped by `os.close`, which
needs the GIL. While another thread of the agent held it, a writer's open(O_WRONLY) of the
probed file slept in the kernel's lease break (2.7 s seen), and an O_NONBLOCK open failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync._util import _leaseprobe, fs
from relaysync._util.fs import open_for_writing, root_held


def _leases_on(path: Path) -> list[str]:
    """The lines of /proc/locks that are leases on `path`'s inode."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return [line for line in f if "LEASE" in line and f":{ino} " in line]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("closed")
    (root / "link").symlink_to(root / "d")
    os.mkfifo(root / "d" / "fifo")
    return root


@pytest.fixture(params=["openat2", "walk"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "walk":
        monkeypatch.setattr(fs, "_openat2_usable", False)
    elif not fs._openat2_usable:
        pytest.skip("openat2 is not usable here")
    yield request.param


@pytest.mark.parametrize("held", [False, True])
def test_the_verdicts_and_no_lease_is_left(tree: Path, way: str, held: bool) -> None:
    f = tree / "d" / "f"
    with root_held(tree) if held else open(os.devnull):
        assert open_for_writing(tree, "d/f") is False
        assert _leases_on(f) == []
        writer = os.open(f, os.O_WRONLY)
        try:
            assert open_for_writing(tree, "d/f") is True
        finally:
            os.close(writer)
        assert open_for_writing(tree, "d/f") is False
        assert _leases_on(f) == []
        for unknown in ("d/missing", "d/fifo", "d", "link/f", "../root/d/f", "d/f\0x"):
            assert open_for_writing(tree, unknown) is None, unknown
    # no lease left: a writer's non-blocking open goes through at once
    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))


def test_the_c_probe_and_its_errors(tree: Path) -> None:
    fd = os.open(tree / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        assert _leaseprobe.probe(fd, b"f", 0) == 0
        assert _leaseprobe.probe(fd, b"fifo", 0) == 2  # not a regular file: never blocks
        with pytest.raises(FileNotFoundError):
            _leaseprobe.probe(fd, b"missing", 0)
        with pytest.raises(OSError):
            _leaseprobe.probe(fd, b"../link", 0)  # the link itself: O_NOFOLLOW
    finally:
        os.close(fd)
    assert _leases_on(tree / "d" / "f") == []


_WRITER = """
import os, sys
path, stop = sys.argv[1], sys.argv[2]
ok = refused = 0
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        ok += 1
    except BlockingIOError:
        refused += 1  # the probe's lease was held
print(ok, refused, flush=True)
"""


def _probe_loop(root: Path, stop: threading.Event, done: list[int]) -> None:
    while not stop.is_set():
        open_for_writing(root, "d/f")
        done[0] += 1


def test_a_writer_is_not_refused_while_another_thread_holds_the_gil(tree: Path) -> None:
    """A probing thread, the main thread busy in Python with a long switch interval (it gives
    the GIL up only every 50 ms), and another process opening the probed file for writing with
    O_NONBLOCK meanwhile. Before, the lease stayed held while the probing thread waited for the
    GIL to drop it: about one in ten of the writer's opens were refused (EAGAIN). Now only an open
    that lands in the microseconds between the lease's take and drop is (about 1 in 10,000).
    A ratio, not a time: the bound (2 %) is far from both."""
    stop_file = tree.parent / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tree / "d" / "f"), str(stop_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "ready\n"
    stop, done = threading.Event(), [0]
    prober = threading.Thread(target=_probe_loop, args=(tree, stop, done))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    try:
        prober.start()
        spin_until = time.monotonic() + 1.0
        while time.monotonic() < spin_until or done[0] < 5:  # busy in Python: the GIL held
            pass
        stop_file.touch()
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        prober.join()
    ok, refused = map(int, writer.communicate(timeout=60)[0].split())
    assert ok + refused > 100  # the writer did run meanwhile
    assert refused < 0.02 * (ok + refused), (ok, refused, done[0])
