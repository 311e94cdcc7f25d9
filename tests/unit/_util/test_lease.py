"""`_util/lease.py`: the read-lease probe of hot files (`probe_lease`), taken and dropped in one
C call with the GIL released (`_leaseprobe`), and `closed_as_scanned`, which tells a file written
into a new directory complete only if it is not empty, no process has it open for writing, and
the lease's fstat shows the file the scan saw.

Found in review (notes/s24/watchfix2-review.md #2): the lease was dropped by `os.close`, which
needs the GIL; a writer's open(O_WRONLY) of the probed file slept in the lease break (2.7 s).
Then (notes/s24/note.md): a file just created is visible, empty, before its creator's descriptor
counts as a writer, a lease is granted in that window, and an empty version was sent.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from relaysync._util import _leaseprobe, fs, lease
from relaysync._util.fs import root_held
from relaysync._util.lease import ScannedFile, closed_as_scanned, probe_lease
from tests._tmpfs import mount_tmpfs, unmounted_at_exit


def _leases_on(path: Path) -> list[str]:
    """The lines of /proc/locks that are leases on `path`'s inode."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return [line for line in f if "LEASE" in line and f":{ino} " in line]


def _scanned(path: Path) -> ScannedFile:
    st = os.lstat(path)
    return ScannedFile(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("closed")
    (root / "d" / "empty").touch()
    (root / "link").symlink_to(root / "d")
    (root / "d" / "flink").symlink_to(root / "d" / "f")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("outside the root")
    (root / "out").symlink_to(tmp_path / "outside")
    os.mkfifo(root / "d" / "fifo")
    return root


@pytest.fixture(params=["openat2", "walk"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "walk":
        monkeypatch.setattr(fs, "_openat2_usable", False)
    elif not fs._openat2_usable:
        pytest.skip("openat2 is not usable here")
    yield request.param


UNKNOWN_PATHS = ("d/missing", "d/fifo", "d", "d/flink", "link/f", "out/f", "../root/d/f", "d/f\0x")


@pytest.mark.parametrize("held", [False, True])
def test_the_verdicts_and_no_lease_is_left(tree: Path, way: str, held: bool) -> None:
    f = tree / "d" / "f"
    with root_held(tree) if held else open(os.devnull):
        closed = probe_lease(tree, "d/f")
        st = os.stat(f)
        assert closed == (False, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        assert _leases_on(f) == []
        writer = os.open(f, os.O_WRONLY)
        try:
            assert probe_lease(tree, "d/f") == (True, 0, 0, 0, 0, -1)
        finally:
            os.close(writer)
        assert probe_lease(tree, "d/f").writing is False
        assert _leases_on(f) == []
        for unknown in UNKNOWN_PATHS:
            assert probe_lease(tree, unknown).writing is None, unknown
    # no lease left: a writer's non-blocking open goes through at once
    os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))


def test_only_a_non_empty_closed_file_as_scanned_is_complete(tree: Path, way: str) -> None:
    f = tree / "d" / "f"
    scanned = _scanned(f)
    with root_held(tree):
        assert closed_as_scanned(tree, "d/f", scanned) is True
        # empty: maybe inside its creator's open(O_CREAT), before the descriptor is a writer
        assert closed_as_scanned(tree, "d/empty", _scanned(tree / "d" / "empty")) is False
        with open(f, "a"):  # open for writing
            assert closed_as_scanned(tree, "d/f", scanned) is False
        assert closed_as_scanned(tree, "d/f", scanned._replace(size=1)) is False
        assert closed_as_scanned(tree, "d/f", scanned._replace(mtime_ns=1)) is False
        assert closed_as_scanned(tree, "d/f", scanned._replace(size=0)) is False
        assert closed_as_scanned(tree, "d/f", scanned._replace(ctime_ns=0)) is False  # unknown
    # another file of the same size and mtime renamed over it: not the file the scan saw
    (tree / "d" / "g").write_text("CLOSED")
    os.utime(tree / "d" / "g", ns=(scanned.mtime_ns, scanned.mtime_ns))
    os.rename(tree / "d" / "g", f)
    assert _scanned(f)._replace(ino=scanned.ino, ctime_ns=scanned.ctime_ns) == scanned
    assert closed_as_scanned(tree, "d/f", scanned) is False
    assert closed_as_scanned(tree, "d/f", _scanned(f)) is True
    # never through a symlink, out of the root, or into something not a regular file
    for path in ("link/f", "out/f", "d/flink", "../root/d/f", "d/fifo", "d/f\0x", "d/missing"):
        assert closed_as_scanned(tree, path, _scanned(f)) is False, path
    assert closed_as_scanned(tree, "out/f", _scanned(tree.parent / "outside" / "f")) is False


def test_a_rewrite_that_kept_size_and_mtime_is_not_the_file_scanned(tree: Path, way: str) -> None:
    """Rewritten in place between the scan and the probe, its size kept and its mtime set back
    (`cp -p`, `rsync --inplace -t`): the same inode, size and mtime, another content. Found at
    stop 34's close: the check did not compare the ctime, and told it complete."""
    f = tree / "d" / "f"
    scanned = _scanned(f)
    deadline = time.monotonic() + 10.0
    while os.stat(f).st_ctime_ns == scanned.ctime_ns:  # the ctime clock ticks coarsely
        assert time.monotonic() < deadline, "the ctime never moved"
        f.write_text("CLOSED")  # as long as "closed"
        os.utime(f, ns=(scanned.mtime_ns, scanned.mtime_ns))
    assert _scanned(f)._replace(ctime_ns=scanned.ctime_ns) == scanned
    with root_held(tree):
        assert closed_as_scanned(tree, "d/f", scanned) is False
        assert closed_as_scanned(tree, "d/f", _scanned(f)) is True


def test_a_probe_built_before_ctime_tells_no_file_complete(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An older build of `_leaseprobe` answers six numbers, no ctime: a hot file is then held as
    without the probe, never told complete on a check that could not see a rewrite; and the
    stale build (a checkout updated without rebuilding) is said once, with what to do."""
    probe = _leaseprobe.probe
    monkeypatch.setattr(lease, "_leaseprobe", SimpleNamespace(probe=lambda *a: probe(*a)[:6]))
    monkeypatch.setattr(lease, "_told_old_build", [])
    f = tree / "d" / "f"
    assert probe_lease(tree, "d/f").writing is False
    assert closed_as_scanned(tree, "d/f", _scanned(f)) is False
    told = [r for r in caplog.records if "before the ctime check" in r.getMessage()]
    assert len(told) == 1 and "rebuild it" in told[0].getMessage()


def test_a_file_on_another_file_system_below_the_root_is_never_complete(tree: Path) -> None:
    mounted = tree / "mnt"
    with unmounted_at_exit(mounted):
        mount_tmpfs(mounted, size="1m")
        (mounted / "f").write_text("on a tmpfs")
        assert probe_lease(tree, "mnt/f").writing is False  # the lease itself works there
        assert closed_as_scanned(tree, "mnt/f", _scanned(mounted / "f")) is False


def test_a_lease_the_agent_may_not_take_tells_nothing() -> None:
    """Not the owner and no CAP_LEASE (EACCES): a child that is not root may read the file but
    not lease it. Its folder is in /tmp, open to that user (the test's own may not be)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    with tempfile.TemporaryDirectory(dir="/tmp") as where:
        root = Path(where)
        os.chmod(root, 0o755)
        (root / "f").write_text("root's")
        scanned = _scanned(root / "f")
        assert closed_as_scanned(root, "f", scanned) is True  # root may
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: nobody
            try:
                os.setuid(65534)
                verdict = probe_lease(root, "f").writing
                ok = verdict is None and not closed_as_scanned(root, "f", scanned)
                os.write(write, b"ok" if ok else repr(verdict).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read, "rb") as answer:
            assert answer.read() == b"ok"


def test_without_the_c_probe_nothing_is_probed(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe in Python held the lease until its thread got the GIL back (a writer's open waited
    1.4 s): not built, a hot file is held as before, and the agent says so once."""
    monkeypatch.setattr(lease, "_leaseprobe", None)
    monkeypatch.setattr(lease, "_told_unbuilt", [])
    scanned = _scanned(tree / "d" / "f")
    assert probe_lease(tree, "d/f").writing is None
    assert closed_as_scanned(tree, "d/f", scanned) is False
    assert closed_as_scanned(tree, "d/f", scanned) is False
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "not built" in caplog.records[0].message


def test_the_c_probe_and_its_errors(tree: Path) -> None:
    fd = os.open(tree / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        verdict, dev, ino, size, sec, part, c_sec, c_part = _leaseprobe.probe(fd, b"f", 0)
        st = os.stat(tree / "d" / "f")
        assert (verdict, dev, ino, size) == (0, st.st_dev, st.st_ino, st.st_size)
        assert sec * 1_000_000_000 + part == st.st_mtime_ns
        assert c_sec * 1_000_000_000 + c_part == st.st_ctime_ns
        assert _leaseprobe.probe(fd, b"fifo", 0) == (2, 0, 0, 0, 0, 0, 0, 0)  # never blocks
        with pytest.raises(FileNotFoundError):
            _leaseprobe.probe(fd, b"missing", 0)
        with pytest.raises(OSError):
            _leaseprobe.probe(fd, b"../link", 0)  # the link itself: O_NOFOLLOW
    finally:
        os.close(fd)
    assert _leases_on(tree / "d" / "f") == []
