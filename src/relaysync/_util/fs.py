"""File-system helpers: opening, creating and removing below a root without following a symlink
(a source reads, a target writes nothing outside its folder), or blocking."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from relaysync._util import _openat2

# O_NOFOLLOW: a path replaced by a symlink (out of the root, to /dev/zero) is not followed.
# O_NONBLOCK: opening a FIFO does not wait for a writer (it has no effect on regular files).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result] | None:
    """Open `path` for reading if it is a regular file, with the stat of what was opened.

    The final component is not followed and a FIFO does not block, so whatever is at `path`
    now, the caller reads only the regular file it opened: pass the fd on, never the path.

    Returns:
        (fd, its fstat), the caller closes fd; None if `path` is gone or is not a regular file.

    Raises:
        OSError: something is there but cannot be opened (EACCES, EMFILE, EIO...): not "gone".
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        _raise_unless_gone(exc)
        return None
    return _if_regular(fd)


# The errors of an open that mean "no regular file there (any more)": gone, a symlink or a
# non-directory on the way, out of the root, or a socket or device now. Any other (EACCES,
# EMFILE, ENFILE, EIO, ENOMEM...) says nothing of the file: it is raised, never read as gone.
GONE_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.ENXIO, errno.ENODEV}
)


def _raise_unless_gone(exc: OSError) -> None:
    """Re-raise `exc` unless it means the file is gone (GONE_ERRNOS)."""
    if exc.errno not in GONE_ERRNOS:
        raise exc


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# RESOLVE_NO_SYMLINKS: no component is followed (as O_NOFOLLOW on each step of the walk);
# RESOLVE_BENEATH: "/" or ".." cannot lead out of the root.
_RESOLVE = _openat2.RESOLVE_NO_SYMLINKS | _openat2.RESOLVE_NO_MAGICLINKS | _openat2.RESOLVE_BENEATH
# The kernel (or a seccomp filter) does not offer openat2 as asked: walk instead.
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG})
_openat2_usable = _openat2.available()
_ROOT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # followed: the operator's own link
# openat2 does not add O_LARGEFILE as glibc's open does: without it a 32-bit kernel refuses a file
# over 2 GiB with EOVERFLOW, which would read as "no plain file there" (0 on 64-bit).
_LARGE = getattr(os, "O_LARGEFILE", 0)
_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# openat2, as every call given a path, refuses one of PATH_MAX (4096) bytes or more with its NUL
# (ENAMETOOLONG): a longer relative path is resolved in parts of fewer bytes than this.
_PATH_PART_BYTES = 4000


def open_regular_in(
    root: str | os.PathLike[str], relpath: str
) -> tuple[int, os.stat_result] | None:
    """`open_regular` of `relpath` below `root`, no component of it followed if it is a symlink.

    A directory replaced by a symlink (to outside the folder) between a write's journaling and
    its send must not be read through. The kernel resolves the whole path in one openat2 call
    from `root`, refusing any symlink and anything not below it; where openat2 is missing or
    forbidden, each directory is opened relative to the one above it (O_PATH, O_NOFOLLOW), then
    the file. `root` itself is the operator's and may be a link (see `root_held`).

    Returns:
        (fd, its fstat), the caller closes fd; None if the file is gone, is not a regular file,
        or a directory on its way is not a real directory.

    Raises:
        OSError: something is there but cannot be opened (EACCES, EMFILE, EIO...): not "gone".
    """
    held = _held_fd(root)
    refused = False
    if _openat2_usable and "\0" not in relpath:  # with a NUL, the walk raises as os.open does
        try:
            fd = _open_beneath(root, held, relpath)
        except _OpenAt2Refused:
            refused = True
        else:
            return None if fd is None else _if_regular(fd)
    return _walk_and_open(root, held, relpath, openat2_refused=refused)


@contextmanager
def root_held(root: str | os.PathLike[str]) -> Iterator[None]:
    """Within, this thread's `open_regular_in(root, ...)` start from one descriptor of `root`
    opened on entry, not from `root` opened anew for each file (two system calls fewer each).

    For a batch of files read at once: `root` (which may be a link) is resolved once for the
    batch, as if the batch were read at that instant. Nothing is held if `root` cannot be opened
    (each call then opens it and finds out for itself).
    """
    roots = _held_roots()
    key = os.fspath(root)
    if key in roots:  # held by an enclosing batch already
        yield
        return
    try:
        roots[key] = os.open(key, _ROOT_FLAGS)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.close(roots.pop(key))


class _OpenAt2Refused(Exception):
    """openat2 failed with one of _UNSUPPORTED: it says nothing about the path."""


def _open_beneath(root: str | os.PathLike[str], held: int | None, relpath: str) -> int | None:
    """openat2 of `relpath` from `root` (or its held fd): the new fd, or None if there is no
    plain path there (gone, or a symlink or non-directory on the way, or out of `root`).

    Raises:
        _OpenAt2Refused: openat2 itself was refused.
        OSError: something is there but cannot be opened (not GONE_ERRNOS).
    """
    try:
        root_fd = held if held is not None else os.open(root, _ROOT_FLAGS)
    except OSError as exc:
        _raise_unless_gone(exc)
        return None
    try:
        try:
            return _openat2_beneath(root_fd, relpath, _READ_FLAGS | _LARGE)
        except BlockingIOError:  # a lease: wait for its break, as a plain open does
            return _openat2_beneath(root_fd, relpath, (_READ_FLAGS | _LARGE) & ~os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise _OpenAt2Refused from exc
        _raise_unless_gone(exc)  # ELOOP (a symlink), EXDEV (out of root), ENOENT, ENOTDIR
        return None
    finally:
        if held is None:
            os.close(root_fd)


def _walk_and_open(
    root: str | os.PathLike[str], held: int | None, relpath: str, *, openat2_refused: bool
) -> tuple[int, os.stat_result] | None:
    """open_regular_in by walking each directory; once the walk opens a file that openat2
    refused, openat2 is refused here as such (seccomp, an old kernel) and is not tried again."""
    global _openat2_usable
    head, _, name = relpath.rpartition("/")
    try:
        parent = _open_dir_in(root, head, root_fd=held)
    except OSError as exc:
        _raise_unless_gone(exc)
        return None
    try:
        fd = open_for_read(name, dir_fd=parent)
    except OSError as exc:
        _raise_unless_gone(exc)
        return None
    finally:
        os.close(parent)
    if openat2_refused:
        _openat2_usable = False
    return _if_regular(fd)


def open_for_read(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """os.open of `path` (relative to `dir_fd` if given) with _READ_FLAGS: not followed if it
    is a symlink (ELOOP), not waiting for a FIFO's writer. A lease (Samba's oplocks) refuses a
    non-blocking open with EAGAIN where a plain one waits for its break: so does this (a FIFO
    never refuses so).
    """
    try:
        return os.open(path, _READ_FLAGS, dir_fd=dir_fd)
    except BlockingIOError:
        return os.open(path, _READ_FLAGS & ~os.O_NONBLOCK, dir_fd=dir_fd)


_held = threading.local()


def _held_roots() -> dict[str, int]:
    roots: dict[str, int] | None = getattr(_held, "roots", None)
    if roots is None:
        roots = _held.roots = {}
    return roots


def _held_fd(root: str | os.PathLike[str]) -> int | None:
    roots: dict[str, int] | None = getattr(_held, "roots", None)
    return roots.get(os.fspath(root)) if roots else None


def open_dir_in(root: str | os.PathLike[str] | int, reldir: str) -> int:
    """A descriptor of the directory `reldir` below `root` ("" is root) to list, no component of
    `reldir` followed if it is a symlink (`root` itself may be one): a scan reads nothing outside.
    `root` may be a descriptor of a directory held open (an O_PATH one will do; left open).

    Raises:
        OSError: gone, not a directory, or a directory on the way is not a real directory
            (ENOENT, ENOTDIR, ELOOP, EXDEV, ...).
    """
    if isinstance(root, int):
        return (
            _open_below(root, reldir, _LIST_FLAGS)
            if reldir
            else os.open(".", _LIST_FLAGS, dir_fd=root)
        )
    if not reldir:
        return os.open(root, _LIST_FLAGS)
    root_fd = os.open(root, _ROOT_FLAGS)
    try:
        return _open_below(root_fd, reldir, _LIST_FLAGS)
    finally:
        os.close(root_fd)


def open_dir_at(root_fd: int, reldir: str) -> int:
    """An O_PATH descriptor of the directory `reldir` below the directory `root_fd` ("" gives a
    new descriptor of it), no component of `reldir` followed if it is a symlink: what is done
    relative to it is done in that real directory, whatever is swapped in for its name later.

    Raises:
        OSError: as `open_dir_in`.
    """
    if not reldir:
        return os.dup(root_fd)
    return _open_below(root_fd, reldir, _DIR_FLAGS)


def make_dirs_at(root_fd: int, reldir: str, mode: int = 0o755) -> tuple[int, str | None]:
    """`open_dir_at`, creating the missing directories of `reldir` one after the other: never
    through a symlink, and iterative (os.makedirs and pathlib recurse: a RecursionError at a
    depth of about 1,000). Each is made with `mode` (less the umask): not os.makedirs' 0o777,
    world-writable under the umask 0 of an agent started so, until a MakeDir sets its mode.

    Returns:
        (the O_PATH descriptor, the topmost directory created, relative to root_fd, or None).

    Raises:
        OSError: as `open_dir_at`, or a directory could not be created.
    """
    try:
        return open_dir_at(root_fd, reldir), None
    except FileNotFoundError:
        pass
    parent, made, parts = os.dup(root_fd), None, reldir.split("/")
    try:
        for i, part in enumerate(parts):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                with suppress(FileExistsError):  # made meanwhile: opened as any other below
                    os.mkdir(part, mode, dir_fd=parent)
                    made = made or "/".join(parts[: i + 1])
                child = os.open(part, _DIR_FLAGS, dir_fd=parent)
            os.close(parent)
            parent = child
    except BaseException:
        os.close(parent)
        raise
    return parent, made


def _open_below(root_fd: int, reldir: str, flags: int) -> int:
    """os.open of the directory `reldir` below `root_fd` with `flags`, no component followed:
    one openat2, or (where it is missing or forbidden) a walk of O_PATH opens."""
    global _openat2_usable
    refused = False
    if _openat2_usable:
        try:
            return _openat2_beneath(root_fd, reldir, flags)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            refused = True
    head, _, name = reldir.rpartition("/")
    parent = _open_dir_in("", head, root_fd=root_fd)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=parent)
    finally:
        os.close(parent)
    if refused:  # the walk opened what openat2 refused: refused as such here, not tried again
        _openat2_usable = False
    return fd


def _openat2_beneath(dir_fd: int, relpath: str, flags: int) -> int:
    """openat2 of `relpath` below `dir_fd` with `flags` and _RESOLVE (no symlink followed, not
    out of `dir_fd`). A path too long for one call (a tree over 4,000 bytes deep) is resolved a
    part at a time: each part's directory is opened (O_PATH) below the one before under the
    same rules, so nothing is followed and nothing leads out of `dir_fd` either.

    Raises:
        OSError: as openat2 (see _util/_openat2.py).
    """
    raw = os.fsencode(relpath)
    if len(raw) < _PATH_PART_BYTES:
        return _openat2.openat2(dir_fd, raw, flags, _RESOLVE)
    *dirs, last = _path_parts(raw)
    held = dir_fd
    try:
        for part in dirs:
            child = _openat2.openat2(held, part, _DIR_FLAGS, _RESOLVE)
            if held != dir_fd:
                os.close(held)
            held = child
        return _openat2.openat2(held, last, flags, _RESOLVE)
    finally:
        if held != dir_fd:
            os.close(held)


def _path_parts(raw: bytes) -> list[bytes]:
    """`raw` cut at slashes into parts of fewer than _PATH_PART_BYTES bytes (a name holds 255
    at most); one that cannot be cut so is left whole, for the kernel to refuse."""
    parts = []
    while len(raw) >= _PATH_PART_BYTES:
        cut = raw.rfind(b"/", 0, _PATH_PART_BYTES)
        if cut <= 0:
            break
        parts.append(raw[:cut])
        raw = raw[cut + 1 :]
    parts.append(raw)
    return parts


@contextmanager
def parent_held(root: str | os.PathLike[str], relpath: str) -> Iterator[tuple[int, str]]:
    """The directory of `relpath` below `root` held open (O_PATH, no component of the way
    followed if it is a symlink) and `relpath`'s name in it, for the duration of the block:
    what is done relative to both is done in that real directory, never out of the folder.

    Raises:
        OSError: a directory on the way is gone or is not a real directory (ENOENT, ENOTDIR,
            ELOOP, EXDEV).
    """
    head, _, name = relpath.rpartition("/")
    parent = _open_dir_in(root, head)
    try:
        yield parent, name
    finally:
        os.close(parent)


def rmdir_in(root: str | os.PathLike[str], relpath: str) -> None:
    """Remove the empty directory `relpath` below `root`, no component of it followed if it is
    a symlink (one swapped in after a check cannot lead the removal out of the folder).

    Raises:
        OSError: not empty, gone, not a directory, or a directory on its way is not real.
    """
    with parent_held(root, relpath) as (parent, name):
        os.rmdir(name, dir_fd=parent)


def chmod_fd(fd: int, mode: int) -> None:
    """fchmod, also of an O_PATH descriptor (by its /proc link, as glibc's fchmodat does)."""
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        os.chmod(f"/proc/self/fd/{fd}", mode)


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove `name` in the directory `dir_fd` and everything below it; a symlink is removed,
    never followed; gone is removed. Iterative, with two descriptors open at any depth
    (shutil.rmtree recurses, and holds one per level): it climbs back by "..", checked to be the
    directory it came down from, so a subtree a local user moves away meanwhile stops it
    (ESTALE) instead of leading it elsewhere.

    Raises:
        OSError: something could not be removed (what could, is).
    """
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    fd = os.open(name, _LIST_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    levels: list[tuple[str, tuple[int, int], list[str]]] = []  # (name, parent's id, subdirs left)
    try:
        subdirs = _remove_files_in(fd)
        while True:
            if subdirs:
                child, parent_id = subdirs.pop(), _dev_ino(fd)  # before child_fd: never leaked
                try:
                    child_fd = os.open(child, _LIST_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    continue
                levels.append((child, parent_id, subdirs))
                os.close(fd)
                fd = child_fd
                subdirs = _remove_files_in(fd)
                continue
            if not levels:
                break
            child, parent_id, subdirs = levels.pop()
            up = os.open("..", _LIST_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if _dev_ino(fd) != parent_id:
                raise OSError(errno.ESTALE, "moved while it was being removed", name)
            os.rmdir(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _dev_ino(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _remove_files_in(fd: int) -> list[str]:
    """Unlink every entry of the directory `fd` but its subdirectories; return their names."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                with suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
    return subdirs


def names_in(dir_fd: int) -> list[str]:
    """The names in the directory `dir_fd` (an O_PATH descriptor will do): that directory's,
    whatever is swapped in for its name since it was opened."""
    fd = os.open(".", _LIST_FLAGS, dir_fd=dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def walk_in(
    root: str | os.PathLike[str] | int,
    top: str = "",
    *,
    on_skip: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, str, list[os.DirEntry[str]]]]:
    """Each directory at and below `top` (below `root`, "" is root; a descriptor of a directory
    held open will do), as (a readable descriptor of it, valid until the next step, its path
    below root, its entries), parents first. Each is opened from root with no component
    followed (`open_dir_in`), and iteratively (os.walk recurses: a RecursionError at a depth of
    about 1,000). One that cannot be opened or listed (gone, swapped for a link, a path over
    PATH_MAX) is skipped with what is below it, and given to `on_skip` if there is one.
    """
    stack = [top]
    while stack:
        reldir = stack.pop()
        try:
            fd = open_dir_in(root, reldir)
        except OSError:
            if on_skip is not None:
                on_skip(reldir)
            continue
        try:
            with os.scandir(fd) as listing:
                entries = list(listing)
            below = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            yield fd, reldir, entries
        except OSError:
            if on_skip is not None:
                on_skip(reldir)
            continue
        finally:
            os.close(fd)
        stack.extend(f"{reldir}/{name}" if reldir else name for name in below)


def _open_dir_in(root: str | os.PathLike[str], reldir: str, *, root_fd: int | None = None) -> int:
    """An O_PATH descriptor of `reldir` below `root` ("" is root), each directory opened
    relative to the one above it, none followed if it is a symlink (`root` itself may be).
    `root_fd`, a held descriptor of `root`, is used instead of opening it (and is left open).

    Raises:
        OSError: a directory on the way is gone or is not a real directory.
    """
    parts = reldir.split("/") if reldir else []
    if ".." in parts:  # as openat2's RESOLVE_BENEATH: never out of `root`, not even and back in
        raise OSError(errno.EXDEV, "a '..' in a path below the folder", reldir)
    parent = os.open(root, _ROOT_FLAGS) if root_fd is None else os.dup(root_fd)
    try:
        for part in parts:
            child = os.open(part, _DIR_FLAGS, dir_fd=parent)
            os.close(parent)
            parent = child
    except BaseException:
        os.close(parent)
        raise
    return parent


def _if_regular(fd: int) -> tuple[int, os.stat_result] | None:
    """(fd, its fstat) if `fd` is a regular file; else it is closed and None is returned.

    Raises:
        OSError: the fstat failed (EIO, EOVERFLOW): `fd` is closed.
    """
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st
