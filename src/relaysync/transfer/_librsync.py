"""A small ctypes binding of librsync 2.x (Debian's librsync2): signature, delta, patch on files.

PyPI's python-librsync calls the 1.x `rs_sig_begin` and fails with 2.x, hence this binding.
Every call works file to file through libc `FILE*` streams, so memory stays flat in the file
size, and ctypes releases the GIL while librsync runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

from relaysync.errors import TransferError

RS_DONE = 0


class LibrsyncError(TransferError):
    """librsync: {} failed with result {}."""


_READ_FN = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_WRITE_FN = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_CLOSE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _CookieIO(ctypes.Structure):
    _fields_ = [("read", _READ_FN), ("write", _WRITE_FN), ("seek", ctypes.c_void_p),
                ("close", _CLOSE_FN)]


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    name = ctypes.util.find_library("rsync") or "librsync.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.fdopen.restype = ctypes.c_void_p
    libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    libc.fopencookie.restype = ctypes.c_void_p
    libc.fopencookie.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CookieIO]
    libc.setvbuf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t]
    lib.rs_sig_args.argtypes = [ctypes.c_longlong, ctypes.POINTER(ctypes.c_int),
                                ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    lib.rs_sig_file.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                ctypes.c_int, ctypes.c_void_p]
    lib.rs_loadsig_file.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    lib.rs_build_hash_table.argtypes = [ctypes.c_void_p]
    lib.rs_delta_file.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.rs_patch_file.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.rs_free_sumset.argtypes = [ctypes.c_void_p]
    lib.rs_free_sumset.restype = None
    return lib, libc


_LIBS = _load()


def available() -> bool:
    """True if librsync 2.x could be loaded (install Debian's librsync2 otherwise)."""
    return _LIBS is not None


def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    if _LIBS is None:
        raise LibrsyncError("loading librsync.so.2 (apt-get install librsync2)", -1)
    return _LIBS


class _File:
    """A libc FILE* opened for the duration of a with-block (from a path, or taking over an fd)."""

    def __init__(self, path: Path | int, mode: str) -> None:
        self.path, self.mode = path, mode
        self.ptr: int = 0

    def __enter__(self) -> int:
        try:
            _, libc = _libs()
        except BaseException:
            if isinstance(self.path, int):
                os.close(self.path)  # taken over: closed on every path, so a pipe writer sees EPIPE
            raise
        if isinstance(self.path, int):
            ptr = libc.fdopen(self.path, self.mode.encode())
        else:
            ptr = libc.fopen(os.fsencode(self.path), self.mode.encode())
        if not ptr:
            err = ctypes.get_errno()
            if isinstance(self.path, int):
                os.close(self.path)  # taken over: closed on every path
            raise OSError(err, os.strerror(err), str(self.path))
        self.ptr = ptr
        return ptr

    def __exit__(self, *exc: object) -> None:
        _, libc = _libs()
        if self.ptr:
            libc.fclose(self.ptr)


def _check(result: int, what: str) -> None:
    if result != RS_DONE:
        raise LibrsyncError(what, result)


# Signatures stay on the source (it keeps the one of the version it sent), so a small block costs
# no bytes on the wire, only memory for the delta's hash table: blocks far smaller than
# librsync's (and rsync's) sqrt(size) default find many more matches in edited text (1 % of the
# lines of 100 MiB: 26 MB of literal data at 2 KiB blocks, 78 MB at the default 10 KiB) at the
# same speed, and bound the table at MAX_BLOCKS entries (a few MB) for large files.
MIN_BLOCK_BYTES = 2048
MAX_BLOCKS = 65536


def block_len_for(size: int, default: int) -> int:
    """The block length to sign a file of `size` bytes with (never above librsync's default)."""
    wanted = max(MIN_BLOCK_BYTES, -(-size // MAX_BLOCKS // 1024) * 1024)
    return min(wanted, default) if default > 0 else wanted


def signature(basis: Path, sig_out: Path) -> None:
    """Write the signature of `basis` (rolling weak sum + strong hash per block) to sig_out."""
    lib, _ = _libs()
    magic = ctypes.c_int(0)
    block_len = ctypes.c_size_t(0)
    strong_len = ctypes.c_size_t(0)
    size = os.path.getsize(basis)
    _check(lib.rs_sig_args(size, ctypes.byref(magic), ctypes.byref(block_len),
                           ctypes.byref(strong_len)), "rs_sig_args")
    block_len = ctypes.c_size_t(block_len_for(size, block_len.value))
    strong_len = ctypes.c_size_t(0)  # again, for the smaller block: more blocks want more bits
    _check(lib.rs_sig_args(size, ctypes.byref(magic), ctypes.byref(block_len),
                           ctypes.byref(strong_len)), "rs_sig_args")
    with _File(basis, "rb") as f_in, _File(sig_out, "wb") as f_out:
        _check(lib.rs_sig_file(f_in, f_out, block_len, strong_len, magic, None), "rs_sig_file")


def delta(sig: Path, new: Path, delta_out: Path, *, start: int = 0, length: int = -1) -> None:
    """Write the delta (copy/literal instructions) that turns the signed basis into `new`.

    With `start`/`length`, only that part of `new` (to its end for length -1) is described:
    the deltas of consecutive parts, applied one after the other, rebuild the whole file, so
    parts can be computed on several cores at once.
    """
    lib, _ = _libs()
    sumset = ctypes.c_void_p()
    with _File(sig, "rb") as f_sig:
        _check(lib.rs_loadsig_file(f_sig, ctypes.byref(sumset), None), "rs_loadsig_file")
    try:
        _check(lib.rs_build_hash_table(sumset), "rs_build_hash_table")
        if start == 0 and length < 0:
            with _File(new, "rb") as f_new, _File(delta_out, "wb") as f_delta:
                _check(lib.rs_delta_file(sumset, f_new, f_delta, None), "rs_delta_file")
            return
        with _RangeFile(new, start, length) as f_new, _File(delta_out, "wb") as f_delta:
            _check(lib.rs_delta_file(sumset, f_new, f_delta, None), "rs_delta_file")
    finally:
        lib.rs_free_sumset(sumset)


class _RangeFile:
    """A read-only libc FILE* over `length` bytes of a file from `start` (to its end for -1).

    Built with fopencookie: libc calls back into Python once per stdio buffer, and the bytes
    are read with pread straight into that buffer (no pipe, no extra copy). A file that shrinks
    just ends the range early; the caller checks that the file did not change.
    """

    def __init__(self, path: Path, start: int, length: int) -> None:
        self.path, self.offset = path, start
        self.end = start + length if length >= 0 else None
        self.fd = -1
        self.ptr: int = 0
        self._read = _READ_FN(self._on_read)  # kept alive as long as libc may call them
        self._close = _CLOSE_FN(lambda _cookie: 0)

    def _on_read(self, _cookie: int | None, buf: int, size: int) -> int:
        want = size if self.end is None else min(size, self.end - self.offset)
        if want <= 0:
            return 0
        try:
            n = os.preadv(self.fd, [(ctypes.c_char * want).from_address(buf)], self.offset)
        except OSError:
            return -1
        self.offset += n
        return n

    def __enter__(self) -> int:
        _, libc = _libs()
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        io = _CookieIO(read=self._read, write=_WRITE_FN(), seek=None, close=self._close)
        ptr = libc.fopencookie(None, b"r", io)
        if not ptr:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "fopencookie failed", str(self.path))
        libc.setvbuf(ptr, None, _IOFBF, _RANGE_BUFFER_BYTES)
        self.ptr = ptr
        return ptr

    def __exit__(self, *exc: object) -> None:
        _, libc = _libs()
        if self.ptr:
            libc.fclose(self.ptr)
        if self.fd >= 0:
            os.close(self.fd)


_IOFBF = 0
_RANGE_BUFFER_BYTES = 1024 * 1024


Sink = Callable[[memoryview], None]


class _SinkFile:
    """A write-only libc FILE* whose bytes go to a Python callable (which may hash and write
    them), one stdio buffer at a time. An exception of the sink fails the write; it is kept
    and raised by the caller instead of librsync's generic I/O error."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.error: BaseException | None = None
        self.ptr: int = 0
        self._write = _WRITE_FN(self._on_write)
        self._close = _CLOSE_FN(lambda _cookie: 0)

    def _on_write(self, _cookie: int | None, buf: int, size: int) -> int:
        try:
            self.sink(memoryview((ctypes.c_char * size).from_address(buf)).cast("B"))
        except BaseException as exc:  # noqa: BLE001 - C cannot take it: kept for the caller
            self.error = exc
            return -1
        return size

    def __enter__(self) -> int:
        _, libc = _libs()
        io = _CookieIO(read=_READ_FN(), write=self._write, seek=None, close=self._close)
        ptr = libc.fopencookie(None, b"w", io)
        if not ptr:
            raise OSError(ctypes.get_errno(), "fopencookie failed")
        libc.setvbuf(ptr, None, _IOFBF, _RANGE_BUFFER_BYTES)
        self.ptr = ptr
        return ptr

    def __exit__(self, *exc: object) -> None:
        _, libc = _libs()
        if self.ptr:
            libc.fclose(self.ptr)  # flushes the last buffer through the sink


def patch(basis: Path, delta_file: Path | int, out: Path | Sink, *, append: bool = False) -> None:
    """Apply `delta_file` (a path, or a readable fd such as a pipe, which this closes) to
    `basis`, writing the new version to `out`: a path (after what it holds, with `append`), or
    a callable that takes the new version's bytes in order. The delta is read strictly in order.
    """
    lib, _ = _libs()
    # The delta first: an fd it is given is taken over (and closed) before anything else can fail.
    with _File(delta_file, "rb") as f_delta, _File(basis, "rb") as f_basis:
        if not callable(out):
            with _File(out, "ab" if append else "wb") as f_out:
                _check(lib.rs_patch_file(f_basis, f_delta, f_out, None), "rs_patch_file")
            return
        sink = _SinkFile(out)
        try:
            with sink as f_out:
                result = lib.rs_patch_file(f_basis, f_delta, f_out, None)
        finally:
            if sink.error is not None:
                raise sink.error
        _check(result, "rs_patch_file")
