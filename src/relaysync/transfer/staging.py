"""Staging and atomic commit on a target: temp file in the same folder, verify, fsync, rename.

Nothing partial is ever visible: a file is written to `.relaysync.<name>.<rand>.tmp` beside
its final place, its strong hash is checked, and only then renamed over the old version. In
"safe" durability the temp files of a batch are fsynced before the renames and each touched
directory is fsynced once after them; "fast" skips both (what rsync does by default).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from relaysync._util.fs import remove_tree_at, walk_in
from relaysync.constants import TEMP_PREFIX
from relaysync.errors import HashMismatch, TransferError
from relaysync.transfer import _partial_lock
from relaysync.watch.manifest import permission_bits

logger = logging.getLogger(__name__)

# Received data goes to the page cache in writes of this size, not in the 1 MiB of a message.
# Measured on the 2-core VM (bench/bulk.py, 1 GiB): with 1 MiB writes the kernel takes large
# page-cache folios from free memory the hypervisor has to fault in again, and the receiver
# spent 1.0-2.9 s of system time per GiB; with 32 KiB writes 0.5-0.7 s (16, 64 and 256 KiB:
# 1.1-3.5 s). 32,768 writes per GiB cost about 30 ms on any machine.
WRITE_PIECE_BYTES = 32 * 1024


_TEMP_SALT = secrets.token_hex(
    3
)  # per process; with the counter, unique without a syscall per name
_temp_counter = itertools.count()


def temp_name_for(final: Path) -> Path:
    return Path(_temp_name(str(final)))


_NAME_KEPT_BYTES = 160  # of a file's name in its temp name; with prefix and suffix under NAME_MAX


def _short_name(name: str) -> str:
    """`name` if short enough to carry in a temp name, else a prefix and a hash of the whole name.

    Bounded in bytes (a 255-byte name of 85 CJK characters plus our prefix and suffix would pass
    NAME_MAX), and unique: two long names that share their beginning get different temp names.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _NAME_KEPT_BYTES:
        return name
    head = raw[: _NAME_KEPT_BYTES - 17].decode("utf-8", "ignore")  # whole characters only
    return f"{head}~{xxhash.xxh3_64_hexdigest(raw)}"


def _temp_name(final: str) -> str:
    # rpartition, not os.path.split and join: a fifth of this function's time on 10,000 small
    # files. A relative final without a folder stays where it is ("" and "" before the name).
    folder, sep, name = final.rpartition("/")
    if not (name.isascii() and len(name) <= _NAME_KEPT_BYTES):  # else one byte a character
        name = _short_name(name)
    return f"{folder}{sep}{TEMP_PREFIX}{name}.{_TEMP_SALT}{next(_temp_counter):x}.tmp"


PARTIAL_SUFFIX = ".part"
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def partial_name_for(final: Path, content_hash: bytes, owner: int) -> Path:
    """The name of a resumable partial: stable for (mapping, file, content), so a restart finds
    it, and the mapping's own (members of an N:M job share a folder and may receive the same file)."""
    return final.with_name(
        f"{TEMP_PREFIX}{_short_name(final.name)}.{owner}.{content_hash.hex()[:16]}{PARTIAL_SUFFIX}"
    )


def fsync_dir(path: Path | str | int) -> None:
    """fsync a directory, named or by a descriptor (an O_PATH one included) of it."""
    if isinstance(path, int):
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=path)
    else:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    ) -> IncomingFile:
        """A new temp file beside `final`, in `final`'s directory held open as `dir_fd` (never
        through a symlink)."""
        final = os.fspath(final)
        temp = _temp_name(final)
        cut = final.rfind("/") + 1
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
    ) -> IncomingFile:
        """A temp file holding `data`, the whole content of a small file, verified before it
        is written: bytes that are not the announced ones never reach the disk.

        Raises:
            TransferError: more bytes than the announced `size`.
            HashMismatch: not the bytes announced (nothing was written).
            OSError: the temp file could not be made or written (it is removed again).
        """
        if len(data) > size:
            raise TransferError(f"more data than the announced {size} bytes")
        if len(data) != size or xxhash.xxh3_128_digest(data) != expected_hash:
            raise HashMismatch(final)
        incoming = cls.open(final, size=size, mode=mode, mtime_ns=mtime_ns, dir_fd=dir_fd)
        try:
            written = os.write(incoming.fd, data) if size <= WRITE_PIECE_BYTES else 0
            if written < size:  # a short write, or more than one piece
                _write_from(incoming.fd, memoryview(data)[written:])
        except BaseException:
            incoming.discard()
            raise
        incoming.received = size
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
            if self.fd >= 0 or not self.temp_name.endswith(PARTIAL_SUFFIX):
                os.unlink(self.temp_name[self.cut :], dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        finally:
            self.close()

    @property
    def is_partial(self) -> bool:
        """A named, resumable partial (locked while open), not a temp file of one batch."""
        return self.temp_name.endswith(PARTIAL_SUFFIX)

    def close(self) -> None:
        fd, self.fd = self.fd, -1  # never closed twice, even if close fails (the number is reused)
        if fd >= 0:
            os.close(fd)


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


class CommitBatch:
    """Verified temp files waiting to be made durable and renamed into place together."""

    def __init__(
        self,
        *,
        durable: bool,
        before_replace: Callable[[int, str, str], None] | None = None,
        mode_mask: int = 0,
        check_dir: Callable[[int], None] | None = None,
    ) -> None:
        self.durable = durable
        # Raises OSError if a directory descriptor files were staged in no longer is the directory
        # at its path (paths.DirHandles.check_still_there): checked once per directory a commit.
        self.check_dir = check_dir
        self.mode_mask = mode_mask  # bits the target's policy removes (watch/target_policy.py)
        self._files: list[IncomingFile] = []
        # Keeps the old version (synchronization and backup): given the directory held open, the
        # name in it and the final name (root/path).
        self.before_replace = before_replace

    def __len__(self) -> int:
        return len(self._files)

    def add(self, incoming: IncomingFile) -> None:
        self._files.append(incoming)

    def holds_final(self, final: str) -> bool:
        """Whether a staged file is to be renamed to `final` (a string as IncomingFile keeps it)."""
        return any(f.final_name == final for f in self._files)

    def files(self) -> list[IncomingFile]:
        """The staged files, in the order they were added."""
        return list(self._files)

    def replace_files(self, files: list[IncomingFile]) -> None:
        """Keep only `files` (a conflict rule dropped the others, already discarded)."""
        self._files = list(files)

    def commit(self) -> float:
        """Set each temp file's mode and mtime (and fsync it), rename each into place, fsync
        each directory once. Return the unix time just before the last rename: about when the
        last of the files became visible (the others a little earlier), never after it."""
        files, self._files = self._files, []
        visible_at = time.time()
        try:
            self._set_attributes(files)
            if files:
                visible_at = self._rename_all(files)
        except BaseException:
            _discard_keeping_partials(files)
            raise
        return visible_at

    def _set_attributes(self, files: list[IncomingFile]) -> None:
        """Mode and mtime of each temp file; its fsync in safe durability (which covers them)."""
        durable = self.durable
        for f in files:
            if f.temp_name.endswith(PARTIAL_SUFFIX):
                _check_still_named(f)
            os.fchmod(f.fd, permission_bits(f.mode) & ~self.mode_mask)
            os.utime(f.fd, ns=(f.mtime_ns, f.mtime_ns))
            if durable:
                os.fsync(f.fd)

    def _rename_all(self, files: list[IncomingFile]) -> float:
        """Rename each file into place (then fsync the directories in safe durability); return
        the time just before the last rename."""
        dirs: set[int] = set()
        last, visible_at = files[-1], 0.0
        if self.check_dir is not None:
            for fd in {f.dir_fd for f in files}:
                self.check_dir(fd)
        for f in files:
            partial = f.temp_name.endswith(PARTIAL_SUFFIX)
            if partial:
                _check_still_named(f)  # again: the fsyncs before may have taken a while
            else:
                f.close()  # before its name appears (an NFS client writes back on close)
            if self.before_replace is not None:
                self.before_replace(f.dir_fd, f.final_name[f.cut :], f.final_name)
            if f is last:
                visible_at = time.time()
            _replace(f)
            # A partial is closed once renamed, not before: its lock goes with its descriptor,
            # and a successor must never take over (and write into) a file that becomes the
            # final. (Without a successor there is none: a session ends the one before it.)
            if partial:
                f.close()
            if self.durable:
                dirs.add(f.dir_fd)
        for d in dirs:
            fsync_dir(d)
        return visible_at

    def discard(self, *, keep_partials: bool = True) -> None:
        """Drop the staged files, keeping the named partials on disk (closed) to be resumed,
        unless `keep_partials` is False (a full disk: they would hold their space)."""
        files, self._files = self._files, []
        if keep_partials:
            _discard_keeping_partials(files)
        else:
            for f in files:
                f.discard()


def _replace(f: IncomingFile) -> None:
    """Rename `f`'s temp file to its final name in its directory held open; a directory in
    the way is removed, but only for a temp file still there."""
    replace_at(f.dir_fd, f.temp_name[f.cut :], f.dir_fd, f.final_name[f.cut :])


# What rename(2) says of a directory in the way, or of a directory renamed over a non-directory.
_IN_THE_WAY = frozenset({errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR})


def replace_at(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """os.replace of the name `src` in the directory `src_fd` to `dst` in `dst_fd`, each the
    real directory held open (a name swapped for a link is moved or replaced, never followed).
    What is in the way goes: a directory (and its tree) at `dst`, or anything at `dst` when
    `src` is a directory (rename(2) replaces only an empty directory, or a non-directory by one).

    Raises:
        OSError: `src` is gone, or the rename failed otherwise (nothing was removed then).
    """
    try:
        os.replace(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except OSError as exc:
        if exc.errno not in _IN_THE_WAY:
            raise
        try:
            moved = os.lstat(src, dir_fd=src_fd)
            there = os.lstat(dst, dir_fd=dst_fd)
        except OSError:
            raise exc from None
        if not (stat.S_ISDIR(there.st_mode) or stat.S_ISDIR(moved.st_mode)):
            raise
        remove_tree_at(dst_fd, dst)
        os.replace(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _check_still_named(f: IncomingFile) -> None:
    """Raise TransferError if a partial's name no longer leads to the file this session wrote.

    A session that outlived its link, should another file be put under the name meanwhile
    (the partial's lock keeps successor sessions out; a writer that ignores it), would otherwise
    rename that half-written file into place. Temp files of small files have names of their own;
    only partials are shared.
    """
    if not f.temp_name.endswith(PARTIAL_SUFFIX):
        return
    mine = os.fstat(f.fd)
    try:
        named = os.lstat(f.temp_name[f.cut :], dir_fd=f.dir_fd)
    except FileNotFoundError:
        return  # removed: the rename fails as it always did
    if (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino):
        raise TransferError(
            f"{f.final_name}: another session took over its partial; this one commits nothing"
        )


def _discard_keeping_partials(files: list[IncomingFile]) -> None:
    """Remove the temp files of `files`, but close and keep the named partials among them.

    A staged partial was received whole and verified: the next session's MappingState lists it
    at its full size and the source sends none of it again. It goes by the usual rules (a commit,
    a delete, a newer version...). Back to 0600: `finish` gave it the file's own mode, and a
    read-only mode would keep the next session from opening it to resume.
    """
    for f in files:
        if f.temp_name.endswith(PARTIAL_SUFFIX) and _writable_again(f):
            f.close()
        else:
            f.discard()


def _writable_again(f: IncomingFile) -> bool:
    """Give a staged file back the temp mode 0600 (False if that failed: not resumable as it is)."""
    try:
        fd = f.fd
        if fd < 0:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(f.temp_name[f.cut :], flags, dir_fd=f.dir_fd)
    except FileNotFoundError:
        return True  # renamed into place already: nothing left to keep
    except OSError:
        return False
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        return False
    finally:
        if fd != f.fd:
            os.close(fd)
    return True


def clean_stale_temps(root: Path, keep: frozenset[Path] = frozenset()) -> int:
    """Remove temp files left by a crash under root, except the resumable partials in `keep`."""
    removed = 0
    for dir_fd, reldir, entries in walk_in(root):  # any depth, never through a link
        for entry in entries:
            name = entry.name
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
