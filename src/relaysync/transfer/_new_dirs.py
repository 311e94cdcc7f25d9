"""A directory a batch makes, built under a temp name: its files written at their own names in it,
and the whole directory renamed into place when the batch commits.

A file staged the usual way costs two updates of its directory (its temp file made, then renamed
over the final name: about 15 µs of ext4's time each on the 2-core VM). Inside a directory that
nobody can see yet a file can be made at its final name at once, and one rename of the directory
makes all of them visible together. On a first copy most files land in directories the target
lacks: 100 directories of 100 files of 4 KiB were written in 0.27 s of system time this way
against 0.39 s with a temp file and a rename per file.

The directory is renamed with RENAME_NOREPLACE: one that a local user or another writer made at
its path meanwhile is never replaced. The commit fails then, the batch is discarded and the
source sends it again, which finds the directory there and stages its files the usual way. What
a crash leaves (a directory with TEMP_PREFIX and NEW_DIR_SUFFIX) goes with the other temp names
(staging.clean_stale_temps); the watchers ignore it as they ignore any TEMP_PREFIX name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
from dataclasses import dataclass, field

from relaysync._util.fs import chmod_fd, remove_tree_at
from relaysync.constants import TEMP_PREFIX
from relaysync.transfer._temp_names import _temp_name

logger = logging.getLogger(__name__)

NEW_DIR_SUFFIX = ".newdir"


def _process_umask() -> int:
    """This process's umask, read without changing it (os.umask sets one for every thread
    meanwhile); 0o777 where /proc does not say (then no file is made with its final mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777


_UMASK = _process_umask()  # read once: nothing in the agent changes it


def made_with(mode: int) -> bool:
    """Whether a file created with permission bits `mode` should get exactly them (the umask
    takes none away): a file in a new directory is then made with its final mode, and the
    commit spares its fchmod if the file has it (staging.py checks: a default ACL of the parent
    cuts the mode instead of the umask). Nobody sees it before the directory's rename: 0700."""
    return not mode & (_UMASK | ~0o777)


_RENAME_NOREPLACE = 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _bind_renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's renameat2 (2.28 and later); None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # CDLL: the GIL is released meanwhile
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _bind_renameat2()


def rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Rename `src` in `src_fd` to `dst` in `dst_fd`, failing with FileExistsError if anything
    is at `dst`. Where the kernel or file system has no RENAME_NOREPLACE (EINVAL, ENOSYS), a
    plain rename after an lstat that found nothing there (rename(2) replaces a directory only
    by an empty one).

    Raises:
        FileExistsError: something is at `dst`.
        OSError: the rename failed otherwise.
    """
    if _renameat2 is not None:
        encode = os.fsencode
        if _renameat2(src_fd, encode(src), dst_fd, encode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), dst)
    try:
        os.lstat(dst, dir_fd=dst_fd)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


@dataclass
class NewDir:
    """One directory a batch makes, under its temp name until `commit`.

    Resource handling: owns `fd` (closed by `commit` or `discard`); `parent_fd` is the caller's
    (transfer/paths.py DirHandles), open until the batch is committed or discarded.
    """

    path: str  # below the folder's root
    parent_fd: int
    name: str  # its name in the parent once committed
    temp: str  # its name in the parent until then
    fd: int
    mode: int  # set at the commit: a mode without the owner's write bit would refuse its files
    # per permission bits a file was made with in it: whether the kernel gave them whole (the
    # umask, read once, and this directory's default ACL, if any, decide it alike for each file)
    modes_given: dict[int, bool] = field(default_factory=dict)

    @classmethod
    def make(cls, parent_fd: int, path: str, mode: int) -> NewDir | None:
        """The new directory `path` in `parent_fd`, under its temp name; None if anything is
        at `path` already (the caller makes or reuses it the usual way).

        Raises:
            OSError: it could not be made.
        """
        name = path.rpartition("/")[2]
        try:
            os.lstat(name, dir_fd=parent_fd)
            return None
        except FileNotFoundError:
            pass
        temp = _temp_name(name).removesuffix(".tmp") + NEW_DIR_SUFFIX
        os.mkdir(temp, 0o700, dir_fd=parent_fd)
        try:
            fd = os.open(temp, _DIR_FLAGS, dir_fd=parent_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(temp, dir_fd=parent_fd)
            raise
        return cls(path, parent_fd, name, temp, fd, mode)

    def commit(self, *, durable: bool) -> None:
        """Give the directory its mode (and fsync it, `durable`), then rename it into place.

        Raises:
            FileExistsError: something appeared at its path meanwhile (nothing is replaced).
            OSError: otherwise; the directory stays under its temp name for `discard`.
        """
        os.fchmod(self.fd, self.mode)
        try:
            if durable:
                os.fsync(self.fd)
            rename_noreplace(self.parent_fd, self.temp, self.parent_fd, self.name)
        except FileExistsError as exc:
            self._writable()
            raise FileExistsError(
                errno.EEXIST,
                f"{self.path} was made on this target while the batch wrote it; nothing of it is"
                " replaced, its files come again",
                self.path,
            ) from exc
        except BaseException:
            self._writable()
            raise
        self._close()

    def discard(self) -> None:
        """Remove the directory and what was written in it (an uncommitted batch)."""
        self._writable()
        self._close()
        try:
            remove_tree_at(self.parent_fd, self.temp)
        except OSError as exc:  # left for clean_stale_temps at the next start
            logger.warning("could not remove the uncommitted directory %s: %s", self.path, exc)

    def _writable(self) -> None:
        """Back to the owner's 0700 (a read-only mode would keep an agent that is not root from
        removing the files in it); a failure is left to `discard`'s warning."""
        with contextlib.suppress(OSError):
            os.fchmod(self.fd, 0o700)

    def _close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def is_new_dir_name(name: str) -> bool:
    """Whether `name` is a temp name `NewDir` gives (what a crash may leave)."""
    return name.startswith(TEMP_PREFIX) and name.endswith(NEW_DIR_SUFFIX)


def remove_left_new_dir(dir_fd: int, name: str) -> None:
    """Remove a directory `NewDir` left under its temp `name` in `dir_fd` (a crash between its
    mode and its rename may have left it read-only), never through a link swapped in for it.

    Raises:
        OSError: it could not be removed.
    """
    try:
        fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        chmod_fd(fd, 0o700)
    finally:
        os.close(fd)
    remove_tree_at(dir_fd, name)
