"""Staging and atomic commit on a target: temp file in the same folder, verify, fsync, rename.

Nothing partial is ever visible: a file is written to `.relaysync.<name>.<rand>.tmp` beside
its final place, its strong hash is checked, and only then renamed over the old version. In
"safe" durability the temp files of a batch are fsynced before the renames and each touched
directory is fsynced once after them; "fast" skips both (what rsync does by default).

This module receives a file into its temp file (`IncomingFile`); the names of temp files and
partials are transfer/_temp_names.py, the commit of a batch (`CommitBatch`) is
transfer/_commit_batch.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from relaysync._util.fs import walk_in
from relaysync.constants import TEMP_PREFIX
from relaysync.errors import HashMismatch, TransferError
from relaysync.protocol.messages import INT64_MAX, INT64_MIN
from relaysync.transfer import _partial_lock
from relaysync.transfer._commit_batch import CommitBatch as CommitBatch
from relaysync.transfer._commit_batch import fsync_dir as fsync_dir
from relaysync.transfer._commit_batch import replace_at as replace_at
from relaysync.transfer._new_dirs import NewDir, is_new_dir_name, remove_left_new_dir
from relaysync.transfer._temp_names import PARTIAL_SUFFIX, _temp_name, partial_name_for
from relaysync.transfer._temp_names import temp_name_for as temp_name_for

try:
    from relaysync.transfer import _newfiles
except ImportError:  # not built (a checkout without `build_ext`): os.open, os.write... instead
    _newfiles = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# Received data goes to the page cache in writes of this size, not in the 1 MiB of a message.
# Measured on the 2-core VM (bench/bulk.py, 1 GiB): with 1 MiB writes the kernel takes large
# page-cache folios from free memory the hypervisor has to fault in again, and the receiver
# spent 1.0-2.9 s of system time per GiB; with 32 KiB writes 0.5-0.7 s (16, 64 and 256 KiB:
# 1.1-3.5 s). 32,768 writes per GiB cost about 30 ms on any machine.
WRITE_PIECE_BYTES = 32 * 1024


_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LateStepFailed(Exception):
    """Setting the mtime of a file written whole, or its close, failed (`IncomingFile.whole`'s
    one call takes these steps of the commit early): a failure of the batch, as the commit's
    would be, never a refusal of the file. Nothing of the file is left."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class IncomingFile:
    """One file being received into its temp file.

    The paths are kept as strings: a receiver of 10,000 small files spent a fifth of its time
    building and formatting `Path` objects. `final` and `temp` give them as `Path`.
    """

    final_name: str
    temp_name: str
    size: int
    mode: int
    mtime_ns: int
    fd: int
    received: int = 0
    hasher: xxhash.xxh3_128 = field(default_factory=xxhash.xxh3_128)
    made_dir: Path | None = None  # the topmost directory opening a partial created
    # The directory it is made and renamed in (not owned: the receiver's paths.DirHandles, held
    # open with no link followed), where the names start (`cut`). Every name of it (temp,
    # partial, final) is used relative to this descriptor, never as a path.
    dir_fd: int = -1
    cut: int = 0
    # The xxh3-128 of the content, once verified (`whole`, `finish`): what the commit compares
    # with the file at the final name, to keep no version of a file a replay would not replace.
    content_hash: bytes = b""
    # Written at its own name in a directory the batch makes (transfer/_new_dirs.py): nothing to
    # rename, its directory's rename makes it visible; `mode_set`: made with its final mode.
    in_new_dir: bool = False
    mode_set: bool = False
    # Written, given its mode and mtime and closed at once (`whole` in a new directory, fast
    # durability): the commit has nothing to do for it but its directory's rename.
    finished: bool = False

    @property
    def final(self) -> Path:
        return Path(self.final_name)

    @property
    def temp(self) -> Path:
        return Path(self.temp_name)

    @classmethod
    def open(
        cls,
        final: Path | str,
        *,
        size: int,
        mode: int,
        mtime_ns: int,
        dir_fd: int,
        new_dir: NewDir | None = None,
        final_mode: int | None = None,
    ) -> IncomingFile:
        """A new temp file beside `final`, in `final`'s directory held open as `dir_fd` (never
        through a symlink); or, given the `new_dir` it goes in, the file at its own name there,
        made with `final_mode` if given (permission bits the umask keeps whole: _new_dirs.py).

        Raises:
            FileExistsError: `new_dir` holds that name already (the same file twice in a batch).
            OSError: it could not be made.
        """
        final = os.fspath(final)
        cut = final.rfind("/") + 1
        if new_dir is not None:
            temp, cut = _in_new_dir(final, cut, new_dir)
            made = 0o600 if final_mode is None else final_mode
            fd = os.open(temp[cut:], _TEMP_FLAGS, made, dir_fd=new_dir.fd)
            incoming = cls(final, temp, size, mode, mtime_ns, fd, dir_fd=new_dir.fd, cut=cut)
            incoming.in_new_dir = True
            # Only if the kernel gave it that mode: a default ACL of the parent cuts it instead of
            # the umask: the commit's fchmod puts it right. Looked at for the directory's first
            # file of that mode (an fstat a file cost 4 % of a 10,000-file first copy's apply).
            if final_mode is not None:
                given = new_dir.modes_given.get(final_mode)
                if given is None:
                    given = new_dir.modes_given[final_mode] = _has_mode(fd, final_mode)
                incoming.mode_set = given
            return incoming
        temp = _temp_name(final)
        fd = os.open(temp[cut:], _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
        return cls(final, temp, size, mode, mtime_ns, fd, dir_fd=dir_fd, cut=cut)

    @classmethod
    def whole(
        cls,
        final: str,
        data: bytes,
        expected_hash: bytes,
        *,
        size: int,
        mode: int,
        mtime_ns: int,
        dir_fd: int,
        new_dir: NewDir | None = None,
        final_mode: int | None = None,
        finish: bool = False,
    ) -> IncomingFile:
        """A temp file holding `data`, the whole content of a small file, verified before it
        is written: bytes that are not the announced ones never reach the disk. In `new_dir`,
        if given, at its own name, with `final_mode` if given (`open`). `finish` (nothing to
        fsync at the commit): a file in `new_dir` made with its final mode gets its mtime and
        is closed at once, all in one compiled call (`_newfiles`, if built).

        Raises:
            TransferError: more bytes than the announced `size`.
            HashMismatch: not the bytes announced (nothing was written).
            OSError: the temp file could not be made or written (it is removed again).
        """
        if len(data) > size:
            raise TransferError(f"more data than the announced {size} bytes")
        if len(data) != size or xxhash.xxh3_128_digest(data) != expected_hash:
            raise HashMismatch(final)
        if (
            finish
            and new_dir is not None
            and final_mode is not None
            and new_dir.modes_given.get(final_mode)  # seen given in this directory (`open`)
            and _newfiles is not None
            and INT64_MIN <= mtime_ns <= INT64_MAX  # else refused by the caller (`_stage`)
        ):
            return cls._finished(
                final, data, expected_hash, size, mode, mtime_ns, new_dir, final_mode
            )
        incoming = cls.open(
            final,
            size=size,
            mode=mode,
            mtime_ns=mtime_ns,
            dir_fd=dir_fd,
            new_dir=new_dir,
            final_mode=final_mode,
        )
        try:
            written = os.write(incoming.fd, data) if size <= WRITE_PIECE_BYTES else 0
            if written < size:  # a short write, or more than one piece
                _write_from(incoming.fd, memoryview(data)[written:])
        except BaseException:
            incoming.discard()
            raise
        incoming.received = size
        incoming.content_hash = expected_hash
        return incoming

    @classmethod
    def _finished(
        cls,
        final: str,
        data: bytes,
        content_hash: bytes,
        size: int,
        mode: int,
        mtime_ns: int,
        new_dir: NewDir,
        final_mode: int,
    ) -> IncomingFile:
        """`whole`'s file in `new_dir`, written with its mode and mtime and closed: one call
        instead of four, each giving the GIL up (a fifth of a 10,000-file first copy's apply).

        Raises:
            FileExistsError: `new_dir` holds that name already (the same file twice in a batch).
            OSError: it could not be made or written (nothing is left of it).
            LateStepFailed: its mtime could not be set, or its close failed.
        """
        temp, cut = _in_new_dir(final, final.rfind("/") + 1, new_dir)
        late = _newfiles.write_whole(new_dir.fd, temp[cut:], final_mode, data, mtime_ns)
        if late:
            raise LateStepFailed(OSError(late, os.strerror(late), temp))
        incoming = cls(final, temp, size, mode, mtime_ns, -1, dir_fd=new_dir.fd, cut=cut)
        incoming.in_new_dir = incoming.mode_set = incoming.finished = True
        incoming.received = size
        incoming.content_hash = content_hash
        return incoming

    @classmethod
    def open_partial(
        cls,
        final: Path | str,
        content_hash: bytes,
        *,
        owner: int,
        size: int,
        mode: int,
        mtime_ns: int,
        offset: int,
        dir_fd: int,
        made_dir: Path | None = None,
    ) -> IncomingFile:
        """Open the resumable partial of `final` for this content, keeping its first `offset` bytes.

        The partial is made, locked and later renamed in `final`'s directory held open as
        `dir_fd` (never through a symlink swapped in for a directory on its way); `made_dir`,
        the topmost directory made to hold it, is kept for its caller.

        The kept prefix is hashed again so the whole-file check at the end covers it too.

        The partial is locked while it is open (`_partial_lock`): a session that finds it held
        by the one before it (a link restarted mid-file) waits for that one to let go, then
        resumes what it left, instead of writing a second copy beside it.

        Raises:
            FileNotFoundError: a resume (offset > 0) of a partial that is gone or shorter.
            BlockingIOError: another session still holds the partial (PARTIAL_BUSY_WAIT_S).
        """
        final = os.fspath(final)
        cut = final.rfind("/") + 1
        temp = str(partial_name_for(Path(final), content_hash, owner))
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if offset == 0 else 0)
        fd = _partial_lock.open_locked(dir_fd, temp[cut:], flags)
        if offset == 0:
            fd = _emptied(fd, dir_fd, temp[cut:], flags)
        incoming = cls(
            final_name=final,
            temp_name=temp,
            size=size,
            mode=mode,
            mtime_ns=mtime_ns,
            fd=fd,
            made_dir=made_dir,
            dir_fd=dir_fd,
            cut=cut,
        )
        try:
            held = os.fstat(fd).st_size
            if held < offset:
                raise FileNotFoundError(2, "partial shorter than the resume offset", str(temp))
            if held != offset:
                os.ftruncate(fd, offset)
            buf = bytearray(1024 * 1024)
            view = memoryview(buf)
            while incoming.received < offset:
                n = os.readv(fd, [view[: min(len(buf), offset - incoming.received)]])
                if not n:
                    raise FileNotFoundError(2, "partial ended early", str(temp))
                incoming.hasher.update(view[:n])
                incoming.received += n
        except BaseException:
            incoming.close()
            raise
        return incoming

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.received:
            raise TransferError(f"chunk at offset {offset}, expected {self.received}")
        self.append(data)

    def append(self, data: bytes | memoryview) -> None:
        """Write the next bytes at the end (from a writer that knows no offsets, e.g. librsync)."""
        if self.received + len(data) > self.size:
            raise TransferError(f"more data than the announced {self.size} bytes")
        _write_from(self.fd, memoryview(data))
        self.hasher.update(data)
        self.received += len(data)

    def finish(self, expected_hash: bytes) -> None:
        """Check size and hash; the file stays in its temp name, mode 0600, until committed
        (a kept partial of a read-only file must stay writable for its owner to resume it, even
        after a kill -9; `CommitBatch.commit` sets mode and mtime).

        Raises:
            HashMismatch: the bytes received are not the bytes announced.
        """
        if self.received != self.size or self.hasher.digest() != expected_hash:
            self.discard()
            raise HashMismatch(self.final_name)
        self.content_hash = expected_hash

    def keep(self, length: int) -> None:
        """Cut the temp file to its first `length` bytes (at most those received) and close it,
        leaving it on disk: a partial the next session resumes at `length`, rehashing it."""
        os.ftruncate(self.fd, min(length, self.received))  # a torn write may have left more
        self.close()

    def discard(self) -> None:
        # Removed before it is closed: a partial's lock goes with its descriptor, and a successor
        # waiting for it must find the name gone, not take over a file about to be removed. A
        # partial closed already is not ours any more: its name may be a successor's file.
        try:
            if self.fd >= 0 or not self.is_partial:
                os.unlink(self.temp_name[self.cut :], dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        finally:
            self.close()

    @property
    def is_partial(self) -> bool:
        """A named, resumable partial (locked while open), not a temp file of one batch."""
        return not self.in_new_dir and self.temp_name.endswith(PARTIAL_SUFFIX)

    def close(self) -> None:
        fd, self.fd = self.fd, -1  # never closed twice, even if close fails (the number is reused)
        if fd >= 0:
            os.close(fd)


def _in_new_dir(final: str, cut: int, new_dir: NewDir) -> tuple[str, int]:
    """The name a file bound for `final` (its name from `cut` on) has in `new_dir`, the
    directory the batch makes under its temp name, and where its name starts there."""
    temp = f"{final[: cut - len(new_dir.name) - 1]}{new_dir.temp}/{final[cut:]}"
    return temp, len(temp) - len(final) + cut


def _has_mode(fd: int, mode: int) -> bool:
    """Whether the open file `fd` has exactly the permission bits `mode` (False if unknown)."""
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode) == mode
    except OSError:
        return False


def _write_from(fd: int, view: memoryview) -> None:
    """Write all of `view` at the file position, in pieces of WRITE_PIECE_BYTES."""
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE_BYTES]) :]


def _emptied(fd: int, dir_fd: int, name: str, flags: int) -> int:
    """`fd` if it is an empty regular file, else a descriptor of a new empty file in its place
    (anything else there, a FIFO planted under the partial's name included, is removed).

    Not a truncate to 0: on ext4 (auto_da_alloc) a file truncated to 0 writes all its new data
    back when it is closed, which made every large copy's commit wait 0.55 s per GiB.
    """
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and not st.st_size:
            return fd
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: created anew below
            os.unlink(name, dir_fd=dir_fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    fresh = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    return _partial_lock.lock_fresh(fresh, name)


def clean_stale_temps(root: Path, keep: frozenset[Path] = frozenset()) -> int:
    """Remove temp files left by a crash under root, except the resumable partials in `keep`,
    and the directories a batch was making (transfer/_new_dirs.py) with what is in them."""
    removed = 0
    for dir_fd, reldir, entries in walk_in(root):  # any depth, never through a link
        for entry in entries:
            name = entry.name
            if is_new_dir_name(name) and entry.is_dir(follow_symlinks=False):
                try:  # a directory a batch was making: what is in it was never committed
                    remove_left_new_dir(dir_fd, name)
                    removed += 1
                except OSError as exc:
                    logger.warning("could not remove the uncommitted directory %s: %s", name, exc)
                continue
            if (
                name.startswith(TEMP_PREFIX)
                and (name.endswith(".tmp") or name.endswith(PARTIAL_SUFFIX))
                and not entry.is_dir(follow_symlinks=False)
                and Path(root, reldir, name) not in keep
            ):
                try:
                    os.unlink(name, dir_fd=dir_fd)
                    removed += 1
                except FileNotFoundError:
                    pass
    if removed:
        logger.info("removed stale temporary files", extra={"root": str(root), "count": removed})
    return removed
