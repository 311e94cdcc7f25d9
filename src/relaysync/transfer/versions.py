"""Synchronization and backup: the previous versions of replaced and deleted files on a target.

A mapping can keep the last N versions of every file its target replaces or deletes, in a
folder beside the served tree (`<target>.versions/`), never inside it. A version is a hard link
to the old inode (no copy; a copy only across file systems), named `<name>@<UTC time>`; the
oldest beyond N are removed. `restore` puts one back atomically.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from relaysync._util.fs import GONE_ERRNOS, make_dirs_at, names_in, open_for_read, walk_in
from relaysync.constants import MAX_NAME_BYTES, TEMP_PREFIX
from relaysync.errors import NotFound, UnsafePath
from relaysync.transfer.builds import hash_version
from relaysync.transfer.paths import check_relpath
from relaysync.transfer.staging import temp_name_for

logger = logging.getLogger(__name__)

SEPARATOR = "@"
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"  # a version's time in UTC; sorts as the names do
_STAMP = re.compile(r"\d{8}T\d{6}\.\d{6}Z")
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# rename(2) of a file onto a directory: EISDIR (Linux); the others where a system says so
_DIR_IN_THE_WAY = (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)


def versions_of(name: str, names: Iterable[str]) -> list[str]:
    """The versions of the file `name` among `names` (a versions directory's), oldest first:
    `name@<stamp>` only. By prefix alone, `icon@2x@<stamp>` (a version of `icon@2x`) was one of
    `icon`'s: listed, restorable as `icon`, and pruned with them, or `icon`'s own new version
    pruned in its place."""
    prefix = name + SEPARATOR
    return sorted(
        n for n in names if n.startswith(prefix) and _STAMP.fullmatch(n, len(prefix)) is not None
    )


def versions_dir_for(root: Path) -> Path:
    """Where the versions of a target folder live: beside it, outside the served tree."""
    return root.with_name(root.name + ".versions")


class VersionKeeper:
    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.dir = versions_dir_for(root)
        self.keep = keep

    def save(self, dir_fd: int, name: str, rel: str) -> None:
        """Keep the file (or every file of the tree) at `name` in the directory `dir_fd` (held
        open; `rel` in the mapping) before it is replaced or deleted. Read through descriptors
        only, no link followed: a directory swapped for a link to outside the folder is never
        read into the versions (from where a restore would put it in the tree)."""
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode):
            self._save_file(dir_fd, name, rel)
        elif stat.S_ISDIR(st.st_mode):
            self._save_tree(dir_fd, name, rel)

    def _save_tree(self, dir_fd: int, name: str, rel: str) -> None:
        """`save` of every file at and below the directory `name` in `dir_fd`."""
        try:
            top = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:  # swapped for a link, or gone, since: nothing of it is ours to keep
            return
        try:
            for fd, reldir, entries in walk_in(top):  # any depth, never through a link
                if any(part.startswith(TEMP_PREFIX) for part in reldir.split("/")):
                    continue  # what a batch was making (transfer/_new_dirs.py): never committed
                for entry in entries:
                    if entry.is_file(follow_symlinks=False) and not entry.name.startswith(
                        TEMP_PREFIX
                    ):
                        self._save_file(
                            fd, entry.name, "/".join(filter(None, (rel, reldir, entry.name)))
                        )
        finally:
            os.close(top)

    def _save_file(self, dir_fd: int, name: str, rel: str) -> None:
        """Keep the regular file `name` in `dir_fd` as a version of `rel`: a hard link to it, or
        a copy across file systems; not if it is no longer a regular file by then."""
        stamp = datetime.fromtimestamp(time.time(), UTC).strftime(STAMP_FORMAT)
        parent, _, base = rel.rpartition("/")
        kept = f"{base}{SEPARATOR}{stamp}"
        if len(kept.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            # Replication wins over history: failing here would block every change after this one.
            logger.warning(
                "no version kept of %s: its name leaves no room for a timestamp (NAME_MAX %s)",
                rel,
                MAX_NAME_BYTES,
            )
            return
        dest_fd = self._versions_at(parent)
        try:
            if self._newest_is(dest_fd, base, dir_fd, name):
                logger.debug("%s is kept as its newest version already", rel)
                return
            if not _link_regular(dir_fd, name, dest_fd, kept):
                _copy_regular(dir_fd, name, dest_fd, kept)  # another file system, links refused
            self._prune(dest_fd, base)
        finally:
            os.close(dest_fd)

    def _versions_at(self, parent: str) -> int:
        """The versions' directory for the files of `parent` (made if missing), held open."""
        self.dir.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # any depth (pathlib's mkdir recurses)
            return make_dirs_at(dir_fd, parent)[0]
        finally:
            os.close(dir_fd)

    def _newest_is(self, dest_fd: int, base: str, dir_fd: int, name: str) -> bool:
        """Whether the newest version of `base` kept in `dest_fd` is the file `name` in `dir_fd`:
        its hard link, or a copy with its size, mtime and content. A replay of a delete, rename
        or commit stopped between the keep and the replace (a kill -9, a failure) would keep it
        a second time, and the prune drop a real previous version for it."""
        kept = versions_of(base, names_in(dest_fd))
        if not kept:
            return False
        last = max(kept)  # the time stamps sort as the names do
        try:
            newest = os.lstat(last, dir_fd=dest_fd)
            there = os.lstat(name, dir_fd=dir_fd)
        except OSError:
            return False
        if (newest.st_dev, newest.st_ino) == (there.st_dev, there.st_ino):
            return True
        if (newest.st_size, newest.st_mtime_ns) != (there.st_size, there.st_mtime_ns):
            return False  # the common case: a real change, nothing read
        mine = _content_of(dir_fd, name, there)
        return mine is not None and mine == _content_of(dest_fd, last, newest)

    def _prune(self, dest_fd: int, name: str) -> None:
        kept = versions_of(name, names_in(dest_fd))
        for old in kept[: -self.keep or None]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old, dir_fd=dest_fd)

    @staticmethod
    def _list(folder: Path, name: str) -> list[Path]:
        try:
            return [folder / n for n in versions_of(name, os.listdir(folder))]
        except FileNotFoundError:
            return []

    def versions(self, rel: str) -> list[str]:
        """The kept versions of `rel`, oldest first, as their time stamps."""
        check_relpath(rel)
        parent, _, name = rel.rpartition("/")
        return [p.name.rpartition(SEPARATOR)[2] for p in self._list(self.dir / parent, name)]

    def restore(self, rel: str, version: str | None = None) -> str:
        """Put a kept version of `rel` back in the served tree (the newest if none is named).

        Returns:
            the version restored.

        Raises:
            NotFound: no such version kept.
            UnsafePath: a directory stands at `rel` (left as it is), or one on its way is a
            symlink or not a directory.
        """
        kept = self.versions(rel)
        chosen = version or (kept[-1] if kept else None)
        if chosen is None or chosen not in kept:
            raise NotFound("version", f"{rel}{SEPARATOR}{version or 'latest'}")
        src = open_for_read(self.dir / f"{rel}{SEPARATOR}{chosen}")
        try:
            self._put_back(src, rel)
        finally:
            os.close(src)
        logger.info("restored %s from version %s", rel, chosen)
        return chosen

    def _put_back(self, src: int, rel: str) -> None:
        """Copy the version open as `src` to `rel` in the tree: under a temp name in its
        directory held open (made if missing, never through a link), then renamed over it.

        Raises:
            UnsafePath: a directory on the way is a symlink or not a directory, or a directory
            stands at `rel` (never removed: what it holds may be no version of anything).
        """
        parent, _, name = rel.rpartition("/")
        root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            dir_fd = make_dirs_at(root_fd, parent)[0]
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                raise UnsafePath(
                    rel, "a directory on its way is a symlink or not a directory"
                ) from exc
            raise
        finally:
            os.close(root_fd)
        try:
            temp = temp_name_for(Path(name)).name
            copy_to(src, os.fstat(src), dir_fd, temp)
            try:  # a plain rename: it replaces a file or link, never a directory (EISDIR)
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException as exc:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=dir_fd)
                if isinstance(exc, OSError) and exc.errno in _DIR_IN_THE_WAY:
                    raise UnsafePath(
                        rel, "a directory is there; restore replaces a file only, move it first"
                    ) from exc
                raise
        finally:
            os.close(dir_fd)


def _content_of(dir_fd: int, name: str, st: os.stat_result) -> bytes | None:
    """The content hash of the regular file `name` in `dir_fd` if it is still the one `st`
    describes (read with no link followed), else None."""
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        fd = open_for_read(name, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return hash_version(fd, st)
    finally:
        os.close(fd)


def _link_regular(dir_fd: int, name: str, dest_fd: int, kept: str) -> bool:
    """Hard-link `name` in `dir_fd` as `kept` in `dest_fd`, by name with no link followed (no
    /proc, nothing opened): what is linked is what the name is at that instant, so it is
    checked after, and taken back if it is not a regular file (a symlink swapped in is linked
    as itself, never followed). True if done (kept, or nothing to keep), False if the file
    system refused the link (another one, links not allowed): copy it then."""
    try:
        os.link(name, kept, src_dir_fd=dir_fd, dst_dir_fd=dest_fd, follow_symlinks=False)
    except OSError as exc:  # EXDEV, EPERM, EMLINK...: a copy may do
        return exc.errno in (errno.ENOENT, errno.ENOTDIR)  # gone meanwhile: not a version of ours
    if not stat.S_ISREG(os.lstat(kept, dir_fd=dest_fd).st_mode):
        os.unlink(kept, dir_fd=dest_fd)  # swapped for a link or else meanwhile: not ours to keep
    return True


def _copy_regular(dir_fd: int, name: str, dest_fd: int, kept: str) -> None:
    """Copy `name` in `dir_fd` to `kept` in `dest_fd` if it is (still) a regular file, read
    through a descriptor opened with no link followed."""
    try:
        src = open_for_read(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            return  # gone, or swapped for a link meanwhile: not a version of ours
        raise
    try:
        st = os.fstat(src)
        if stat.S_ISREG(st.st_mode):
            copy_to(src, st, dest_fd, kept)
    finally:
        os.close(src)


def copy_to(src: int, st: os.stat_result, dir_fd: int, name: str) -> None:
    """Copy the file open as `src` (its fstat `st`) to a new file `name` in `dir_fd`, with its
    mode and times (as shutil.copy2); the new file goes again if the copy fails.

    Raises:
        OSError: `name` exists, or reading or writing failed.
    """
    out = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dir_fd,
    )
    try:
        offset = 0
        while sent := os.sendfile(out, src, offset, _COPY_BYTES):
            offset += sent
        os.fchmod(out, stat.S_IMODE(st.st_mode))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    except BaseException:
        os.close(out)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(out)


_COPY_BYTES = 8 * 1024 * 1024
