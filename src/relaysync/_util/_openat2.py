"""The openat2(2) system call (Linux 5.6), which Python's os module does not offer (3.11).

One call resolves a whole relative path under the rules it is given (no symlink followed, not
out of the directory), where a walk needs one open and one close per directory on the way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from typing import Any

# The number is the same on every architecture of the unified syscall table (since Linux 5.1);
# on others (alpha, ia64, mips) the call is simply not used.
_SYS_OPENAT2 = 437
_UNIFIED_TABLE = {"x86_64", "aarch64", "arm64", "i386", "i686", "riscv64", "ppc64le", "s390x"}

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def _bind() -> Any:
    """libc's `syscall`; None where openat2 cannot be called this way.

    Its arguments are given as ctypes objects made once (see `openat2`) rather than declared
    in `argtypes`: converting them on each call cost a third of the call.
    """
    if sys.platform != "linux" or platform.machine() not in _UNIFIED_TABLE:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall  # CDLL: the GIL is released meanwhile
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


_syscall = _bind()
_NUMBER = ctypes.c_long(_SYS_OPENAT2)
_HOW_BYTES = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
# (flags, resolve) -> (the struct, a reference to it): read only by the kernel, so shared
_hows: dict[tuple[int, int], tuple[_OpenHow, Any]] = {}


def available() -> bool:
    """Whether openat2 can be tried here (the kernel may still refuse it: see `openat2`)."""
    return _syscall is not None


def openat2(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
    """Open `path` relative to `dir_fd` with openat2's `resolve` rules; return the new fd.

    Raises:
        OSError: from the kernel; ENOSYS where it lacks openat2 (or it is not bound here),
            EPERM or ENOSYS where a seccomp filter forbids it, ELOOP for a symlink on the way
            (RESOLVE_NO_SYMLINKS), EXDEV for a path leading out of `dir_fd` (RESOLVE_BENEATH).
        ValueError: `path` holds a NUL byte (the kernel would see a shorter path).
    """
    if _syscall is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    if b"\0" in path:
        raise ValueError("openat2: embedded null byte")
    how = _hows.get((flags, resolve))
    if how is None:
        struct = _OpenHow(flags, 0, resolve)
        how = _hows.setdefault((flags, resolve), (struct, ctypes.byref(struct)))
    while True:  # a Python int goes as a C int: the kernel's `int dfd`
        fd: int = _syscall(_NUMBER, dir_fd, path, how[1], _HOW_BYTES)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.EINTR:  # retried like os.open does (PEP 475)
            raise OSError(err, os.strerror(err))
