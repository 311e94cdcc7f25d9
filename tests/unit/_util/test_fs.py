"""Opening and removing below a folder without following a symlink on the way: a directory
swapped for a link after a check must not lead a read or a removal out of the folder."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync._util import _openat2, fs
from relaysync._util.fs import open_regular_in, rmdir_in, root_held

needs_openat2 = pytest.mark.skipif(
    not _openat2.available(), reason="openat2 cannot be called on this platform"
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "empty").mkdir(parents=True)
    (root / "a" / "f").write_text("inside")
    (outside / "empty").mkdir(parents=True)
    (outside / "f").write_text("outside")
    (outside / "d").mkdir()
    (outside / "d" / "f").write_text("outside")
    (root / "link").symlink_to(outside)
    (root / "a" / "dlink").symlink_to(outside / "d")  # a directory deeper down swapped for a link
    (root / "a" / "flink").symlink_to(outside / "f")  # the file itself a link
    os.mkfifo(root / "a" / "fifo")
    return root


@pytest.fixture(params=["openat2", "walk"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each guarantee holds both with openat2 and with the walk it falls back to; with
    openat2, the walk is made to fail, so that the guarantee is shown to be openat2's own."""
    if request.param == "walk":
        monkeypatch.setattr(fs, "_openat2_usable", False)
    elif not _openat2.available() or not fs._openat2_usable:
        pytest.skip("openat2 is not usable here")
    else:

        def no_walk(*args: object, **kwargs: object) -> None:
            raise AssertionError("walked although openat2 is usable")

        monkeypatch.setattr(fs, "_walk_and_open", no_walk)
    yield request.param


def _read(opened: tuple[int, os.stat_result] | None) -> bytes:
    assert opened is not None
    fd, _ = opened
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_no_symlink_is_followed_below_the_root_either_way(tree: Path, way: str) -> None:
    assert _read(open_regular_in(tree, "a/f")) == b"inside"
    assert open_regular_in(tree, "link/f") is None  # the first directory a link
    assert open_regular_in(tree, "a/dlink/f") is None  # a deeper one
    assert open_regular_in(tree, "a/flink") is None  # the file itself
    assert open_regular_in(tree, "a/f/x") is None  # a file on the way
    assert open_regular_in(tree, "../outside/f") is None  # nor ".." out of the root
    assert open_regular_in(tree, "a/../../outside/f") is None
    assert open_regular_in(tree, str(tree.parent / "outside" / "f")) is None  # nor "/"
    assert open_regular_in(tree, "a/missing") is None
    assert open_regular_in(tree / "missing", "a/f") is None  # nor a root that is gone


def test_a_fifo_is_opened_without_blocking_and_refused_either_way(tree: Path, way: str) -> None:
    assert open_regular_in(tree, "a/fifo") is None  # no writer: a blocking open would hang


def test_a_root_that_is_a_link_is_followed_either_way(tree: Path, way: str) -> None:
    (tree.parent / "root-link").symlink_to(tree)
    assert _read(open_regular_in(tree.parent / "root-link", "a/f")) == b"inside"
    with root_held(tree.parent / "root-link"):
        assert _read(open_regular_in(tree.parent / "root-link", "a/f")) == b"inside"
        assert open_regular_in(tree.parent / "root-link", "a/dlink/f") is None


def test_a_held_root_is_the_one_opened_on_entry_and_is_closed_on_exit(tree: Path, way: str) -> None:
    link, other = tree.parent / "root-link", tree.parent / "other"
    (other / "a").mkdir(parents=True)
    (other / "a" / "f").write_text("other")
    link.symlink_to(tree)
    with root_held(link):
        held = fs._held_fd(link)
        assert held is not None
        with root_held(link):  # nested: the same descriptor
            assert fs._held_fd(link) == held
        link.unlink()
        link.symlink_to(other)  # the operator re-points the root meanwhile
        assert _read(open_regular_in(link, "a/f")) == b"inside"  # the batch's root
        assert open_regular_in(link, "a/flink") is None
    assert fs._held_fd(link) is None
    with pytest.raises(OSError):
        os.fstat(held)
    assert _read(open_regular_in(link, "a/f")) == b"other"  # the next batch sees the new one
    with root_held(tree / "missing"):  # nothing to hold: each call finds out for itself
        assert open_regular_in(tree / "missing", "a/f") is None


@needs_openat2
@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG])
def test_a_refused_openat2_falls_back_to_the_walk_and_is_not_tried_again(
    tree: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    calls = []

    def refused(*args: object) -> int:
        calls.append(args)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(fs, "_openat2_usable", True)
    monkeypatch.setattr(_openat2, "openat2", refused)
    assert open_regular_in(tree, "a/missing") is None  # the walk fails too: maybe the path's
    assert open_regular_in(tree, "link/f") is None
    assert fs._openat2_usable and len(calls) == 2
    assert _read(open_regular_in(tree, "a/f")) == b"inside"  # the walk succeeds: openat2's
    assert not fs._openat2_usable
    assert _read(open_regular_in(tree, "a/f")) == b"inside"
    assert open_regular_in(tree, "a/dlink/f") is None
    assert len(calls) == 3


@needs_openat2
def test_openat2_refuses_what_the_kernel_is_asked_to_refuse(tree: Path) -> None:
    root = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    try:
        flags, resolve = os.O_RDONLY | os.O_CLOEXEC, fs._RESOLVE
        os.close(_openat2.openat2(root, b"a/f", flags, resolve))
        for path, code in ((b"link/f", errno.ELOOP), (b"../outside/f", errno.EXDEV)):
            with pytest.raises(OSError) as caught:
                _openat2.openat2(root, path, flags, resolve)
            assert caught.value.errno == code
        with pytest.raises(ValueError):
            _openat2.openat2(root, b"a/f\0x", flags, resolve)
    finally:
        os.close(root)


def test_a_file_is_opened_below_the_root_never_through_a_link(tree: Path, way: str) -> None:
    opened = open_regular_in(tree, "a/f")
    assert opened is not None
    fd, st = opened
    try:
        assert os.read(fd, 100) == b"inside" and st.st_size == 6
    finally:
        os.close(fd)
    assert open_regular_in(tree, "link/f") is None
    assert open_regular_in(tree, "a/missing") is None
    assert open_regular_in(tree, "a") is None  # a directory is not a regular file


def test_an_empty_directory_is_removed_below_the_root_never_through_a_link(tree: Path) -> None:
    rmdir_in(tree, "a/empty")
    assert not (tree / "a" / "empty").exists()
    with pytest.raises(OSError):
        rmdir_in(tree, "link/empty")  # the same name outside the folder stays
    assert (tree.parent / "outside" / "empty").is_dir()
    with pytest.raises(OSError):
        rmdir_in(tree, "a")  # not empty
    with pytest.raises(OSError):
        rmdir_in(tree, "link")  # the link itself is no directory to remove
    assert (tree / "link").is_symlink()


def test_a_leased_file_is_opened_once_the_open_may_wait(
    tree: Path, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease (Samba's oplocks) refuses a non-blocking open with EAGAIN: read as "gone", the
    file's write was skipped; the open now waits for the lease's break as a plain one does."""
    if way == "openat2":
        real = _openat2.openat2

        def leased2(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
            if flags & os.O_NONBLOCK:
                raise BlockingIOError(errno.EAGAIN, "leased")
            return real(dir_fd, path, flags, resolve)

        monkeypatch.setattr(_openat2, "openat2", leased2)
    else:
        real_open = os.open

        def leased(p: object, flags: int, *args: object, **kwargs: object) -> int:
            if flags & os.O_NONBLOCK and not flags & os.O_PATH:
                raise BlockingIOError(errno.EAGAIN, "leased")
            return real_open(p, flags, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", leased)
    assert _read(open_regular_in(tree, "a/f")) == b"inside"
