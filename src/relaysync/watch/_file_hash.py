"""Hashing a file's content as a scan reads it, and keeping a small file's content read to hash.

`hash_file` reads a file once, not followed and not waited on, in 1 MiB blocks (one read for a
small file: in one compiled call, `_smallread`, if it is built), and may hand what it read whole
to a `Keep` (`_keeper`: the source's content cache, watch/content_cache.py). Moved out of
watch/scanner.py, which hashes through it.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import xxhash

from relaysync._util.fs import open_for_read
from relaysync.constants import SMALL_FILE_BYTES
from relaysync.watch.content_cache import Kept, MappingContent
from relaysync.watch.manifest import mtime_ns_of, permission_bits

try:
    from relaysync.watch import _smallread
except ImportError:  # not built (a checkout without `build_ext`): the reads below in Python
    _smallread = None  # type: ignore[assignment]

HASH_BUFFER_BYTES = (
    1024 * 1024
)  # one read per MiB: large enough to amortise syscalls, small for RAM

_buffers = threading.local()


# digest, content, and the identity (`_identity`) of the file read, as an fstat had it
Keep = Callable[[bytes, bytes, tuple[int, int, int, int, int]], None]
# A compiled read of a small file, as _smallread.read_small gives it:
# (digest, data, dev, ino, mode, size, mtime_ns, ctime_ns, unchanged)
SmallRead = tuple[bytes | None, bytes | None, int, int, int, int, int, int, bool]

# `read_ahead` reads at most this many files, and about this many bytes, in one call
READ_AHEAD_FILES = 256
READ_AHEAD_BYTES = 1024 * 1024


def _unchanged(before: os.stat_result, fd: int) -> bool:
    """Whether the open file `fd` still has the size, mtime and ctime of `before` (False if
    that cannot be told: only a keep is skipped, the hash stands)."""
    try:
        after = os.fstat(fd)
    except OSError:
        return False
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


def hash_file(
    path: Path | str,
    size: int = -1,
    *,
    dir_fd: int | None = None,
    keep: Keep | None = None,
    read: SmallRead | None = None,
) -> bytes:
    """Return the 16-byte xxh3-128 digest of a file's content, read in 1 MiB blocks.

    `size`, the file's size as stat'ed, lets a small file be read with one call: asked for one
    byte more, a short read is the end (a scan of 10,000 small files makes 10,000 calls fewer).
    With `dir_fd`, `path` is relative to that directory (no walk of the whole path per file).
    `keep(digest, data, identity)` is given the content of a file read whole in that one call,
    at the size stat'ed, with the identity of the file read as its fstat had it, unless that
    fstat changed during the read (size, mtime, ctime: a file rewritten meanwhile)
    (watch/content_cache.py). `read`: the file's read by `read_ahead`, at `size`.

    Raises:
        OSError: the file cannot be opened or read.
    """
    if read is None and 0 <= size <= SMALL_FILE_BYTES and _smallread is not None:
        read = _read_small(path, size, dir_fd)
    if read is not None and (digest := _digest_of(path, read, keep)) is not None:
        return digest
    buf = getattr(_buffers, "buf", None)
    if buf is None:  # one per thread, reused: a fresh 1 MiB per small file costs more than the read
        buf = _buffers.buf = bytearray(HASH_BUFFER_BYTES)
    view = memoryview(buf)
    fd, opened = _open_regular(path, dir_fd)
    try:
        filled = 0
        if 0 <= size < len(buf):
            filled = os.readv(fd, [view[: size + 1]])
            if filled == size:  # the end (a file that shrank, or a short read of a network
                digest = xxhash.xxh3_128_digest(view[:filled])  # file system, reads on below)
                if keep is not None and _unchanged(opened, fd):
                    keep(digest, bytes(view[:filled]), _identity(opened))
                return digest
        while filled < len(buf) and (n := os.readv(fd, [view[filled:]])):
            filled += n
        if filled < len(buf):  # end of file within the buffer: the common case of a small file
            return xxhash.xxh3_128_digest(view[:filled])
        hasher = xxhash.xxh3_128(view)
        while n := os.readv(fd, [buf]):
            hasher.update(view[:n])
        return hasher.digest()
    finally:
        os.close(fd)


def read_ahead(dir_fd: int, files: list[tuple[str, int]]) -> dict[str, SmallRead]:
    """The small `files` (name in the open directory `dir_fd`, size stat'ed: at most
    SMALL_FILE_BYTES each) read and hashed in one compiled call, for `hash_file(read=)`: a scan
    gives up the GIL once per call instead of five times per file, each time waiting for the
    agent's other threads to give it back. Those that could not be read are left out:
    `hash_file` reads them again, and tells why. Empty if `_smallread` is not built."""
    if _smallread is None or not files:
        return {}
    names = [name for name, _ in files]
    reads = _smallread.read_many(dir_fd, names, [size for _, size in files])
    return {name: got for name, got in zip(names, reads, strict=True) if got is not None}


def _read_small(path: Path | str, size: int, dir_fd: int | None) -> SmallRead:
    """A file stat'ed at `size` (at most SMALL_FILE_BYTES: its content is read into a new
    buffer, where a larger one would pay for fresh memory each time) read in one compiled call.

    Raises:
        OSError: as `hash_file`; FileNotFoundError also for a link or a socket now.
    """
    try:
        return _smallread.read_small(_AT_FDCWD if dir_fd is None else dir_fd, path, size)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink, a socket now
            raise FileNotFoundError(errno.ENOENT, "no longer a regular file", str(path)) from exc
        raise


def _digest_of(path: Path | str, read: SmallRead, keep: Keep | None) -> bytes | None:
    """The digest of a compiled read, its content given to `keep` if the file did not change
    while read; None if it was not read whole (another size now, a date past 2262): then
    `hash_file` reads it in blocks.

    Raises:
        FileNotFoundError: it is no regular file now (a FIFO, a directory, a device).
    """
    digest, data, dev, ino, mode, st_size, mtime_ns, _, unchanged = read
    if not stat.S_ISREG(mode):
        raise FileNotFoundError(errno.ENOENT, "no longer a regular file", str(path))
    if digest is not None and data is not None and keep is not None and unchanged:
        keep(digest, data, (dev, ino, st_size, mtime_ns, mode))
    return digest


_AT_FDCWD = -100  # openat(2)'s "relative to the working directory"


def _open_regular(path: Path | str, dir_fd: int | None) -> tuple[int, os.stat_result]:
    """Open a file to hash, and fstat it; FileNotFoundError if it is no longer a regular file.

    Not followed, not waited on (`open_for_read`): a file swapped for a link, a FIFO, a socket or
    a device between its lstat and its hash is read as gone (its own event follows), never
    through the link, never blocking the scan on a FIFO without a writer, never reading a device
    such as /dev/zero without end.
    """
    try:
        fd = open_for_read(path, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symlink, a socket now
            raise FileNotFoundError(errno.ENOENT, "no longer a regular file", str(path)) from exc
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "no longer a regular file", str(path))
    return fd, st


def hash_link(target: str) -> bytes:
    """Return the hash of a symlink: the xxh3-128 of its target string."""
    return xxhash.xxh3_128(os.fsencode(target)).digest()


def _keeper(cache: MappingContent, relpath: str, listed: os.stat_result) -> Keep | None:
    """What keeps `relpath`'s content read to hash in `cache`: only if the file read is the one
    listed (a file replaced after its lstat, by a rename over it say, is not kept under the
    listed one's stat), with the mode and mtime of the file read, as a send's fstat had them."""
    if not cache.wants(listed.st_size):
        return None

    listed_identity = _identity(listed)

    def keep(digest: bytes, data: bytes, read: tuple[int, int, int, int, int]) -> None:
        if read == listed_identity:  # so its mode and mtime are the listed ones
            cache.keep(
                relpath, Kept(digest, data, permission_bits(listed.st_mode), mtime_ns_of(listed))
            )

    return keep


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode
