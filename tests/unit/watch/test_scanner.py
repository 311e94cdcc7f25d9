"""Tests for watch.scanner: hashing, diffing against the manifest, symlinks."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
import xxhash
from tests._compiled import built

from relaysync._util import fs
from relaysync.constants import TEMP_PREFIX
from relaysync.testing.cluster import wait_until
from relaysync.watch import _file_hash, scanner
from relaysync.watch._fsevent import FsEvent
from relaysync.watch.changes import PendingChange
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Entry, Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import (
    TreeScan,
    entry_from_stat,
    hash_file,
    make_entry,
    scan,
    scan_tree,
)


def record(manifest: Manifest, changes: list[PendingChange]) -> None:
    for c in changes:
        if c.op == "delete":
            manifest.remove_tree(c.path)
        elif c.entry is not None:
            manifest.put_many([c.entry])


def ops(changes: list[PendingChange]) -> list[tuple[str, str]]:
    return [(c.op, c.path) for c in changes]


def test_hash_file_streams_big_files(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    p = tmp_path / "big"
    p.write_bytes(data)
    assert hash_file(p) == xxhash.xxh3_128(data).digest()
    assert len(hash_file(p)) == 16


@pytest.mark.parametrize("size", [0, 1, 4096, 1024 * 1024 - 1, 1024 * 1024, 3 * 1024 * 1024])
@pytest.mark.parametrize("stat_delta", [0, -1, 1, -4096])
def test_hash_file_with_a_stale_size_still_hashes_the_whole_content(
    tmp_path: Path, size: int, stat_delta: int, small_read: str
) -> None:
    """The size a scan stat'ed may be off by the time the file is read (it grew or shrank):
    the one-call read of a small file must not stop at it."""
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    stated = max(0, size + stat_delta)
    assert hash_file(p, stated) == xxhash.xxh3_128(data).digest()


def test_first_scan_lists_parents_first(
    tree: Path, manifest: Manifest, accept_all: PathFilter
) -> None:
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "y").write_text("y")
    (tree / "a" / "x").write_text("x")
    (tree / "z").write_text("z")
    (tree / f"{TEMP_PREFIX}partial.tmp").write_text("skip me")
    changes = scan_tree(tree, manifest, accept_all)
    assert ops(changes) == [
        ("mkdir", "a"),
        ("write", "z"),
        ("mkdir", "a/b"),
        ("write", "a/x"),
        ("write", "a/b/y"),
    ]
    assert changes[-1].entry == make_entry(tree, "a/b/y")
    record(manifest, changes)
    assert scan_tree(tree, manifest, accept_all) == []


def test_unchanged_files_are_not_rehashed(
    tree: Path, manifest: Manifest, accept_all: PathFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tree / "f"
    p.write_bytes(b"aaaa")
    record(manifest, scan_tree(tree, manifest, accept_all))
    hashed: list[str] = []
    real = scanner.hash_file
    monkeypatch.setattr(
        scanner, "hash_file", lambda at, *a, **k: hashed.append(at) or real(at, *a, **k)
    )
    assert scan_tree(tree, manifest, accept_all) == [] and hashed == []
    st = os.stat(p)
    # same size, mtime put back: the ctime tells (test_rewrite_in_place.py), the hash confirms
    p.write_bytes(b"bbbb")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    [change] = scan_tree(tree, manifest, accept_all)
    assert change.op == "write" and change.base_hash == xxhash.xxh3_128(b"aaaa").digest()
    assert len(hashed) == 1


def test_mode_only_change_is_attr(tree: Path, manifest: Manifest, accept_all: PathFilter) -> None:
    (tree / "f").write_text("x")
    record(manifest, scan_tree(tree, manifest, accept_all))
    os.chmod(tree / "f", 0o600)
    [change] = scan_tree(tree, manifest, accept_all)
    assert change.op == "attr" and change.entry is not None and change.entry.mode == 0o600


def test_deletes_one_per_vanished_subtree(
    tree: Path, manifest: Manifest, accept_all: PathFilter
) -> None:
    (tree / "d" / "e").mkdir(parents=True)
    for name in ("d/1", "d/e/2", "keep"):
        (tree / name).write_text(name)
    record(manifest, scan_tree(tree, manifest, accept_all))
    for name in ("d/e/2", "d/1"):
        (tree / name).unlink()
    (tree / "d" / "e").rmdir()
    (tree / "d").rmdir()
    assert ops(scan_tree(tree, manifest, accept_all)) == [("delete", "d")]


def test_kind_change_deletes_first(tree: Path, manifest: Manifest, accept_all: PathFilter) -> None:
    (tree / "x").write_text("file")
    record(manifest, scan_tree(tree, manifest, accept_all))
    (tree / "x").unlink()
    (tree / "x").mkdir()
    (tree / "x" / "in").write_text("in")
    assert ops(scan_tree(tree, manifest, accept_all)) == [
        ("delete", "x"),
        ("mkdir", "x"),
        ("write", "x/in"),
    ]


def test_symlinks_are_not_followed(
    tree: Path, tmp_path: Path, manifest: Manifest, accept_all: PathFilter
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside, tree / "dirlink")
    os.symlink("nowhere", tree / "dangling")
    changes = scan_tree(tree, manifest, accept_all)
    assert ops(changes) == [("symlink", "dangling"), ("symlink", "dirlink")]
    entry = changes[1].entry
    assert entry == Entry(
        path="dirlink",
        kind="l",
        mtime_ns=entry.mtime_ns,
        mode=entry.mode,
        hash=xxhash.xxh3_128(str(outside).encode()).digest(),
        link_target=str(outside),
    )


def test_a_directory_swapped_for_a_link_after_its_listing_is_not_read_through(
    tree: Path, tmp_path: Path, manifest: Manifest, accept_all: PathFilter
) -> None:
    """Its parent listed a directory; by the time it is walked, it is a link to outside the
    folder: nothing outside is listed or read, and what the manifest knew inside is gone."""
    (tree / "d").mkdir()
    (tree / "d" / "f").write_text("inside")
    record(manifest, scan_tree(tree, manifest, accept_all))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("secret")
    (outside / "g").write_text("secret")
    (tree / "d" / "f").unlink()
    (tree / "d").rmdir()
    (tree / "d").symlink_to(outside)
    scan = TreeScan(tree, manifest, accept_all)
    assert scan.walk_dir("d") == []  # as the walk does after the parent's listing
    assert ops(scan.out) == [("delete", "d/f")]


def _recorded_a_b_f_and_outside(
    tree: Path, tmp_path: Path, manifest: Manifest, accept_all: PathFilter, outside_name: str
) -> None:
    """a/b/f in the folder, recorded; outside it, a tree with a file b/<outside_name> of 14 bytes."""
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("inside")
    record(manifest, scan_tree(tree, manifest, accept_all))
    (tmp_path / "outside" / "b").mkdir(parents=True)
    (tmp_path / "outside" / "b" / outside_name).write_text("outside secret")


def _swap_a_for_outside(tree: Path, tmp_path: Path) -> None:
    (tree / "a").rename(tmp_path / "moved-away")
    (tree / "a").symlink_to(tmp_path / "outside")


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
def test_a_directory_above_one_being_walked_swapped_for_a_link_is_not_read_through(
    tree: Path,
    tmp_path: Path,
    manifest: Manifest,
    accept_all: PathFilter,
    monkeypatch: pytest.MonkeyPatch,
    openat2: bool,
) -> None:
    """`a` was walked and listed `a/b`; then `a` becomes a link to a tree that has a `b` of its
    own: walking `a/b` reads nothing through the link (not only its last component is checked)."""
    if not openat2:
        monkeypatch.setattr(fs, "_openat2_usable", False)
    elif not fs._openat2_usable:
        pytest.skip("openat2 is not usable here")
    _recorded_a_b_f_and_outside(tree, tmp_path, manifest, accept_all, "secret.txt")
    scan = TreeScan(tree, manifest, accept_all)
    assert scan.walk_dir("a") == ["a/b"]
    _swap_a_for_outside(tree, tmp_path)
    assert scan.walk_dir("a/b") == []
    assert ops(scan.out) == [("delete", "a/b/f")]


def test_a_root_that_is_a_link_loop_is_an_error_not_an_empty_folder(
    tmp_path: Path, manifest: Manifest, accept_all: PathFilter
) -> None:
    """An empty listing would journal a delete of every file the manifest knows."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OSError):
        TreeScan(loop, manifest, accept_all).walk_dir("")


def test_the_scan_reads_files_by_name_in_their_directory_and_follows_a_root_link(
    tree: Path, tmp_path: Path, manifest: Manifest, accept_all: PathFilter
) -> None:
    (tree / "d").mkdir()
    (tree / "d" / "f").write_bytes(b"content")
    os.symlink("../elsewhere", tree / "d" / "l")
    (tmp_path / "root-link").symlink_to(tree)  # the operator's root may be a link
    changes = scan_tree(tmp_path / "root-link", manifest, accept_all)
    assert ops(changes) == [("mkdir", "d"), ("write", "d/f"), ("symlink", "d/l")]
    assert changes[1].entry is not None and changes[2].entry is not None
    assert changes[1].entry.hash == xxhash.xxh3_128(b"content").digest()
    assert changes[2].entry.link_target == "../elsewhere"


def test_subdir_scan_and_filter(tree: Path, manifest: Manifest) -> None:
    (tree / "s" / "skip").mkdir(parents=True)
    (tree / "s" / "a.html").write_text("a")
    (tree / "s" / "a.js").write_text("a")
    (tree / "s" / "skip" / "b.html").write_text("b")
    (tree / "other.html").write_text("o")
    flt = PathFilter(include=[r"\.html$"], exclude=[r"/skip$"])
    assert ops(scan_tree(tree, manifest, flt, subdir="s")) == [
        ("mkdir", "s"),
        ("write", "s/a.html"),
    ]
    assert ops(scan_tree(tree, manifest, flt, subdir="s/a.html")) == [("write", "s/a.html")]
    assert scan_tree(tree, manifest, flt, subdir="missing") == []


def test_make_entry_gone(tree: Path) -> None:
    assert make_entry(tree, "nope") is None
    assert make_entry(tree, "nope/deeper") is None


def test_names_and_link_targets_that_are_not_utf8_are_left_out(
    tree: Path, manifest: Manifest, accept_all: PathFilter
) -> None:
    (tree / "good.html").write_text("g")
    root = os.fsencode(tree)
    with open(root + b"/caf\xe9.html", "w") as f:
        f.write("x")
    os.mkdir(root + b"/old\xe9")
    with open(root + b"/old\xe9/inside.html", "w") as f:
        f.write("x")
    os.symlink(b"caf\xe9.html", root + b"/link")
    changes = scan_tree(tree, manifest, accept_all)
    assert ops(changes) == [("write", "good.html")]
    record(manifest, changes)  # SQLite takes them: UTF-8 only
    assert scan_tree(tree, manifest, accept_all, subdir=os.fsdecode(b"caf\xe9.html")) == []


def test_a_link_whose_target_stops_being_utf8_is_deleted(
    tree: Path, manifest: Manifest, accept_all: PathFilter
) -> None:
    os.symlink("café", tree / "link")
    record(manifest, scan_tree(tree, manifest, accept_all))
    os.unlink(tree / "link")
    os.symlink(b"caf\xe9", os.fsencode(tree / "link"))
    assert ops(scan_tree(tree, manifest, accept_all)) == [("delete", "link")]


def test_a_date_past_2262_is_clamped_to_what_the_manifest_and_the_wire_hold(
    tree: Path, manifest: Manifest, accept_all: PathFilter, small_read: str
) -> None:
    """`touch -d 2300-01-01`: st_mtime_ns is past 2**63 - 1, which SQLite's integer column and the
    wire's check refuse (the manifest write raised OverflowError and stopped the mapping)."""
    from relaysync.protocol.messages import INT64_MAX, FileStart
    from relaysync.transfer.ops import SendOptions, iter_file_messages

    future = 10**19  # 2286-11-20
    (tree / "future.html").write_text("from the future")
    os.utime(tree / "future.html", ns=(future, future))
    changes = scan_tree(tree, manifest, accept_all)
    manifest.put_many([c.entry for c in changes if c.entry is not None])
    entry = manifest.get("future.html")
    assert entry is not None and entry.mtime_ns == INT64_MAX
    assert not [
        c for c in scan_tree(tree, manifest, accept_all) if c.path == "future.html"
    ]  # stable
    message = next(iter_file_messages(tree, "future.html", 1, options=SendOptions()))
    assert isinstance(message, FileStart)
    message.validate()
    assert message.mtime_ns == INT64_MAX


@pytest.mark.parametrize("kind", ["fifo", "link", "dir", "socket"])
def test_a_file_swapped_between_its_stat_and_its_hash_reads_as_gone_without_blocking(
    tmp_path: Path, kind: str, small_read: str
) -> None:
    """A FIFO opened to hash it blocked the scan until a writer came (a device such as /dev/zero
    read without end); a symlink was followed. Now each is "gone": its own event follows."""
    (tmp_path / "outside").write_text("secret")
    path = tmp_path / "f"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        path.symlink_to(tmp_path / "outside")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        path.mkdir()
    with pytest.raises(FileNotFoundError):
        hash_file(path, 6)
    st = os.lstat(tmp_path / "outside")  # the stat of a regular file, taken before the swap
    assert entry_from_stat(tmp_path, "f", st) is None


def test_a_file_under_a_lease_is_hashed_once_the_open_may_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease (Samba's oplocks) makes a non-blocking open fail with EAGAIN: that is no reason to
    fail the scan; the open waits for the lease's break as a plain one does."""
    path = tmp_path / "f"
    path.write_bytes(b"leased")
    real_open = os.open

    def leased(p: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_NONBLOCK:
            raise BlockingIOError(errno.EAGAIN, "leased")
        return real_open(p, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", leased)
    monkeypatch.setattr(_file_hash, "_smallread", None)  # the Python read: os.open
    assert hash_file(path, 6) == xxhash.xxh3_128_digest(b"leased")


class _WriteLease:
    """A write lease on a file, as Samba takes for an oplock, until `release`."""

    def __init__(self, path: Path) -> None:
        self._holder = os.open(path, os.O_RDONLY)
        self._ino = os.fstat(self._holder).st_ino
        try:
            fcntl.fcntl(self._holder, fcntl.F_SETSIG, signal.SIGURG)  # ignored by default
            fcntl.fcntl(self._holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as exc:
            self.release()
            pytest.skip(f"no leases on this file system: {exc}")

    def breaking(self) -> bool:
        """Whether an open waits for the lease's break (this file's line of /proc/locks)."""
        return any(
            "BREAKING" in line and f":{self._ino} " in line
            for line in Path("/proc/locks").read_text().splitlines()
        )

    def release(self) -> None:
        holder, self._holder = self._holder, -1
        if holder >= 0:
            os.close(holder)  # the lease goes with it


def test_a_file_under_a_real_lease_is_read_once_its_holder_lets_go(tmp_path: Path) -> None:
    """The compiled read (which os.open above does not reach) under a real write lease: the
    non-blocking open is refused, the blocking one waits for the lease's break, and the file is
    read once the holder lets go."""
    built(_file_hash._smallread, "relaysync.watch._smallread")
    path = tmp_path / "f"
    path.write_bytes(b"leased")
    hashed: list[bytes] = []
    reader = threading.Thread(target=lambda: hashed.append(hash_file(path, 6)))
    lease = _WriteLease(path)
    try:
        reader.start()
        wait_until(lease.breaking, timeout_s=10, what="the read's open to break the lease")
        assert hashed == [] and reader.is_alive()  # waiting for the holder, not refused
    finally:
        lease.release()
        reader.join(timeout=10)
    assert hashed == [xxhash.xxh3_128_digest(b"leased")]


def test_a_wait_for_a_lease_that_signals_interrupt_goes_on_after_their_handlers(
    tmp_path: Path,
) -> None:
    """A handler installed without SA_RESTART (signal.signal) interrupts the open waiting for
    the break (EINTR): the compiled read runs the handlers and opens again, as os.open does
    (review: it failed with InterruptedError, a 'cannot read' on the source)."""
    built(_file_hash._smallread, "relaysync.watch._smallread")
    path = tmp_path / "f"
    path.write_bytes(b"leased")
    alarms: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: alarms.append(signum))
    lease = _WriteLease(path)

    def release_once_interrupted() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # the reader's to take
        try:
            wait_until(lease.breaking, timeout_s=10, what="the read's open to break the lease")
            wait_until(lambda: len(alarms) >= 3, timeout_s=10, what="three handled alarms")
        finally:
            lease.release()

    helper = threading.Thread(target=release_once_interrupted)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    try:
        helper.start()
        digest = hash_file(path, 6)  # in this thread, the one signals interrupt
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        helper.join(timeout=20)
        lease.release()
    assert len(alarms) >= 3
    assert digest == xxhash.xxh3_128_digest(b"leased")


@pytest.mark.parametrize("via", ["write event", "subtree scan", "make_entry"])
def test_an_event_below_a_directory_swapped_for_a_link_is_not_read_through(
    tree: Path, tmp_path: Path, manifest: Manifest, accept_all: PathFilter, via: str
) -> None:
    """An event names a/b/f; meanwhile `a` became a link to a tree that has b/f of its own: the
    outside file was lstat'ed and hashed (its size and hash journaled); now it reads as gone."""
    _recorded_a_b_f_and_outside(tree, tmp_path, manifest, accept_all, "f")
    _swap_a_for_outside(tree, tmp_path)
    if via == "write event":
        changes = ChangeRecorder(tree, manifest, accept_all).detect(
            [FsEvent(kind="write", path="a/b/f")]
        )
        found = [(c.op, c.path, c.entry.size if c.entry else None) for c in changes.changes]
        assert ("write", "a/b/f", 14) not in found
    elif via == "subtree scan":
        assert ops(scan_tree(tree, manifest, accept_all, subdir="a/b/f")) == [("delete", "a/b/f")]
    else:
        assert make_entry(tree, "a/b/f") is None
        assert make_entry(tree, "a") is not None  # the link itself, below the root: read


def test_a_directory_as_deep_as_the_wire_allows_is_listed_and_deeper_paths_are_refused_once(
    tree: Path, manifest: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory whose relative path is 4,096 bytes (MAX_PATH_BYTES: what the wire carries,
    but openat2 refuses a path of PATH_MAX bytes) was never listed: a SourceListError, looked
    at again at every scan. What is below it is longer than the wire carries: not replicated
    (a target would refuse the message and the link with it), with one warning, not an error."""
    name = "n" * 240
    fd = os.open(tree, os.O_RDONLY)
    for _ in range(17):  # 17 x 240 + 16 slashes = 4,096 bytes
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.mkdir("below", dir_fd=fd)
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)
    deepest = "/".join([name] * 17)
    assert len(deepest) == 4096
    flt = PathFilter(root=tree)
    with caplog.at_level("WARNING"):
        for _ in range(2):  # the agent's filter lives as long as its mapping: once per path
            result = scan(tree, manifest, flt)
            assert result.unreadable == []
            assert [c.path for c in result.out][-1] == deepest
            assert all(len(c.path) <= 4096 for c in result.out)
    assert sum("over 4096 bytes below its folder" in r.getMessage() for r in caplog.records) == 2
