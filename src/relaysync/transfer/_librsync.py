"""A small ctypes binding of librsync 2.x (Debian's librsync2): applying a delta (patch).

PyPI's python-librsync calls the 1.x `rs_sig_begin` and fails with 2.x, hence this binding.
Signatures and deltas are computed by our own block search (transfer/delta.py), which writes
librsync's delta format and measured 5-10x faster than librsync's own search.
Every call works file to file through libc `FILE*` streams, so memory stays flat in the file
size, and ctypes releases the GIL while librsync runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path

from relaysync.errors import DeltaBaseUnreadable, TransferError

RS_DONE = 0


class LibrsyncError(TransferError):
    """librsync: {} failed with result {}."""


_READ_FN = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_WRITE_FN = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_CLOSE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _CookieIO(ctypes.Structure):
    _fields_ = [
        ("read", _READ_FN),
        ("write", _WRITE_FN),
        ("seek", ctypes.c_void_p),
        ("close", _CLOSE_FN),
    ]


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
    libc.ferror.argtypes = [ctypes.c_void_p]
    libc.feof.argtypes = [ctypes.c_void_p]
    libc.fdopen.restype = ctypes.c_void_p
    libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    libc.fopencookie.restype = ctypes.c_void_p
    libc.fopencookie.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CookieIO]
    libc.setvbuf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t]
    lib.rs_patch_file.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
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
        # fopencookie(3): 0 on error, never a negative value (glibc then miscounts its buffer and
        # librsync's next fwrite reads past it: a full disk crashed the agent with SIGSEGV).
        if self.error is not None:
            return 0
        try:
            self.sink(memoryview((ctypes.c_char * size).from_address(buf)).cast("B"))
        except BaseException as exc:  # noqa: BLE001 - C cannot take it: kept for the caller
            self.error = exc
            return 0
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


def patch(
    basis: Path | int, delta_file: Path | int, out: Path | Sink, *, append: bool = False
) -> None:
    """Apply `delta_file` (a path, or a readable fd such as a pipe) to `basis` (a path, or a
    readable fd of a regular file), writing the new version to `out`: a path (after what it
    holds, with `append`), or a callable that takes the new version's bytes in order. The delta
    is read strictly in order; the basis at the offsets its COPY commands name (each seeks). A
    descriptor given is taken over: closed on every path.

    Raises:
        DeltaBaseUnreadable: the basis could not be opened or read (the delta itself may be fine).
        LibrsyncError: librsync refused the delta (corrupt); OSError: writing `out` failed.
    """
    with contextlib.ExitStack() as files:
        try:  # the delta first: an fd it is given is taken over before anything else can fail
            f_delta = files.enter_context(_File(delta_file, "rb"))
        except BaseException:
            if isinstance(basis, int):
                os.close(basis)  # taken over too
            raise
        try:
            f_basis = files.enter_context(_File(basis, "rb"))
        except OSError as exc:
            raise DeltaBaseUnreadable(_name(basis), exc.strerror or str(exc)) from exc
        lib, libc = _libs()
        if not callable(out):
            f_out = files.enter_context(_File(out, "ab" if append else "wb"))
            result = lib.rs_patch_file(f_basis, f_delta, f_out, None)
        else:
            sink = _SinkFile(out)
            try:
                with sink as f_out:
                    result = lib.rs_patch_file(f_basis, f_delta, f_out, None)
            finally:
                if sink.error is not None:
                    raise sink.error
        if result != RS_DONE and (libc.ferror(f_basis) or libc.feof(f_basis)):
            # a read error, or shorter than the delta's copies (cut meanwhile): not the delta's fault
            raise DeltaBaseUnreadable(_name(basis), f"read failed (librsync result {result})")
        _check(result, "rs_patch_file")


def _name(path: Path | int) -> str:
    return f"descriptor {path}" if isinstance(path, int) else str(path)
