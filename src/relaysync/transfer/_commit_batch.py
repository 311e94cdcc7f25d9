"""The atomic commit of staged files: mode and mtime set, fsynced, renamed into place together.

A `CommitBatch` holds the verified temp files of a batch (transfer/staging.py `IncomingFile`); in
"safe" durability each is fsynced before the renames and each touched directory once after
them. A failed commit keeps the named partials (closed, mode 0600) to be resumed and removes the
other temp files. Moved out of transfer/staging.py.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from relaysync._util.fs import open_for_read, remove_tree_at
from relaysync.errors import TransferError
from relaysync.transfer.builds import hash_version
from relaysync.watch.manifest import permission_bits

if TYPE_CHECKING:
    from relaysync.transfer._new_dirs import NewDir
    from relaysync.transfer.staging import IncomingFile


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
        # The directory the batch makes, its files in it (_new_dirs.py): at most one, as anything
        # but a small file of it commits the batch first (transfer/_file_receiver.py).
        self._new_dir: NewDir | None = None
        # Keeps the old version (synchronization and backup): given the directory held open, the
        # name in it and the final name (root/path).
        self.before_replace = before_replace

    def __len__(self) -> int:
        """The files and new directories waiting for the commit."""
        return len(self._files) + (self._new_dir is not None)

    def add(self, incoming: IncomingFile) -> None:
        self._files.append(incoming)

    def add_dir(self, new_dir: NewDir) -> None:
        """The directory the batch makes, renamed into place after its files are ready.

        Raises:
            ValueError: the batch makes one already (commit it first).
        """
        if self._new_dir is not None:
            raise ValueError(f"the batch makes {self._new_dir.path} already")
        self._new_dir = new_dir

    @property
    def new_dir(self) -> NewDir | None:
        """The directory the batch makes, if it makes one (its files go in it)."""
        return self._new_dir

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
        new_dir, self._new_dir = self._new_dir, None
        visible_at = time.time()
        try:
            self._set_attributes(files)
            if files:
                visible_at = self._rename_all(files)
            if new_dir is not None:
                visible_at = self._commit_dir(new_dir)
        except BaseException:
            _drop(files, new_dir, keep_partials=True)
            raise
        return visible_at

    def _set_attributes(self, files: list[IncomingFile]) -> None:
        """Mode and mtime of each temp file; its fsync in safe durability (which covers them)."""
        durable = self.durable
        for f in files:
            if f.finished:  # done as it was written (IncomingFile.whole)
                continue
            if f.is_partial:
                _check_still_named(f)
            if not f.mode_set:
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
            if f.in_new_dir:  # at its name already: its directory's rename shows it
                f.close()
                continue
            partial = f.is_partial
            if partial:
                _check_still_named(f)  # again: the fsyncs before may have taken a while
            else:
                f.close()  # before its name appears (an NFS client writes back on close)
            if self.before_replace is not None and not _holds_already(f):
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

    def _commit_dir(self, new_dir: NewDir) -> float:
        """Rename the new directory into place (its files closed already); return the time just
        before the rename."""
        if self.check_dir is not None:
            self.check_dir(new_dir.parent_fd)
        visible_at = time.time()
        new_dir.commit(durable=self.durable)
        if self.durable:
            fsync_dir(new_dir.parent_fd)
        return visible_at

    def discard(self, *, keep_partials: bool = True) -> None:
        """Drop the staged files, keeping the named partials on disk (closed) to be resumed,
        unless `keep_partials` is False (a full disk: they would hold their space)."""
        files, self._files = self._files, []
        new_dir, self._new_dir = self._new_dir, None
        _drop(files, new_dir, keep_partials=keep_partials)


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


def _holds_already(f: IncomingFile) -> bool:
    """Whether the name `f` is renamed to holds `f`'s version already: a replay of a commit whose
    renames were done (a kill -9 before the watermark was saved, a commit failing part-way, a
    session ending after a flush and before its Checkpoint). Nothing is replaced then, and the
    version keeper must not keep the current file as a previous version (it would prune a real
    one). Read only when its size and mtime are the staged file's, as a commit leaves them: a
    change that really replaces a file almost always changes either, and costs an lstat then."""
    name = f.final_name[f.cut :]
    try:
        st = os.lstat(name, dir_fd=f.dir_fd)
    except OSError:
        return False
    if (
        not f.content_hash
        or not stat.S_ISREG(st.st_mode)
        or (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns)
    ):
        return False
    try:
        fd = open_for_read(name, dir_fd=f.dir_fd)
    except OSError:
        return False  # gone or swapped meanwhile: the keeper sees what is there
    try:  # None unless the file read is the one stat'ed, unchanged while read
        return hash_version(fd, st) == f.content_hash
    finally:
        os.close(fd)


def _check_still_named(f: IncomingFile) -> None:
    """Raise TransferError if a partial's name no longer leads to the file this session wrote.

    A session that outlived its link, should another file be put under the name meanwhile
    (the partial's lock keeps successor sessions out; a writer that ignores it), would otherwise
    rename that half-written file into place. Temp files of small files have names of their own;
    only partials are shared.
    """
    if not f.is_partial:
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


def _drop(files: list[IncomingFile], new_dir: NewDir | None, *, keep_partials: bool) -> None:
    """Drop what a batch staged: the temp files (but the named partials, if `keep_partials`) and
    the new directory if not renamed into place, with the files in it (closed, never removed one
    by one: a committed directory's descriptor is closed, its number maybe reused)."""
    others = []
    for f in files:
        if f.in_new_dir:
            f.close()
        else:
            others.append(f)
    if keep_partials:
        _discard_keeping_partials(others)
    else:
        for f in others:
            f.discard()
    if new_dir is not None and new_dir.fd >= 0:  # a committed one is closed, and stays
        new_dir.discard()


def _discard_keeping_partials(files: list[IncomingFile]) -> None:
    """Remove the temp files of `files`, but close and keep the named partials among them.

    A staged partial was received whole and verified: the next session's MappingState lists it
    at its full size and the source sends none of it again. It goes by the usual rules (a commit,
    a delete, a newer version...). Back to 0600: `finish` gave it the file's own mode, and a
    read-only mode would keep the next session from opening it to resume.
    """
    for f in files:
        if f.is_partial and _writable_again(f):
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
