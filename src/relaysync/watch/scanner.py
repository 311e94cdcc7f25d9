"""The scanner: walks a tree, hashes what changed and diffs it against the manifest.

A scan never follows symlinks and never re-hashes a file whose kind, size, mtime, mode, inode
number and ctime match the manifest: that keeps a rescan of an unchanged 100,000-file tree close to the cost of
`rsync --dry-run` (one lstat per entry and one indexed manifest read per directory). A file's
content is hashed by watch/_file_hash.py; the change an entry makes is told by
watch/_entry_changes.py.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from relaysync._util.fs import GONE_ERRNOS, open_dir_in
from relaysync.constants import SMALL_FILE_BYTES
from relaysync.errors import SourceListError, SourceReadError
from relaysync.watch._entry_changes import _kind_of, changes_for, same_stat
from relaysync.watch._entry_changes import diff_entry as diff_entry
from relaysync.watch._file_hash import HASH_BUFFER_BYTES as HASH_BUFFER_BYTES
from relaysync.watch._file_hash import (
    READ_AHEAD_BYTES,
    READ_AHEAD_FILES,
    Keep,
    SmallRead,
    _keeper,
    hash_file,
    hash_link,
    read_ahead,
)
from relaysync.watch.changes import PendingChange
from relaysync.watch.content_cache import MappingContent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Entry, Manifest, mtime_ns_of, permission_bits
from relaysync.watch.target_policy import TargetPolicy, tighten_in

logger = logging.getLogger(__name__)

_GONE = (FileNotFoundError, NotADirectoryError)


def join(parent: str, name: str) -> str:
    """Join a relative POSIX directory path and a name ("" is the root)."""
    return f"{parent}/{name}" if parent else name


def entry_from_stat(
    root: Path,
    relpath: str,
    st: os.stat_result,
    *,
    hash_: bytes | None = None,
    dir_fd: int | None = None,
    cache: MappingContent | None = None,
    read: SmallRead | None = None,
) -> Entry | None:
    """Build an Entry from an lstat result, hashing the content unless `hash_` is given.

    `dir_fd`, an open descriptor of the directory holding `relpath`, is where the content is
    read from (by name), instead of root/relpath. `cache`: where a small file's content read
    to hash is kept for the links (the source's). `read`: its content read ahead (`read_ahead`).

    Returns None for unsupported kinds (devices, sockets, FIFOs) and for paths that vanished.

    Raises:
        SourceReadError: a regular file that is there but cannot be read (EACCES, EIO, EMFILE):
            not gone, so never to be taken for a delete; the caller looks at it again later.
    """
    mode = permission_bits(st.st_mode)
    at = relpath.rpartition("/")[2] if dir_fd is not None else f"{root}/{relpath}"
    try:
        if stat.S_ISDIR(st.st_mode):
            return Entry(path=relpath, kind="d", mtime_ns=mtime_ns_of(st), mode=mode)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(at, dir_fd=dir_fd)
            return Entry(
                path=relpath,
                kind="l",
                mtime_ns=mtime_ns_of(st),
                mode=mode,
                hash=hash_link(target),
                link_target=target,
            )
        if stat.S_ISREG(st.st_mode):
            # a string, not root / relpath: building a Path cost a fifth of a small file's scan
            digest = hash_
            if digest is None:
                keep = _keeper(cache, relpath, st) if cache is not None else None
                digest = _hash(at, relpath, st.st_size, dir_fd, keep, read)
            return Entry(
                path=relpath,
                kind="f",
                size=st.st_size,
                mtime_ns=mtime_ns_of(st),
                mode=mode,
                hash=digest,
                ino=st.st_ino,
                ctime_ns=st.st_ctime_ns,
            )
    except _GONE:
        logger.debug("vanished while scanning: %s", relpath)
    return None


def _hash(
    at: str,
    relpath: str,
    size: int,
    dir_fd: int | None,
    keep: Keep | None = None,
    read: SmallRead | None = None,
) -> bytes:
    try:
        return hash_file(at, size, dir_fd=dir_fd, keep=keep, read=read)
    except OSError as exc:
        if isinstance(exc, _GONE) or exc.errno in GONE_ERRNOS:
            raise
        raise SourceReadError.of(relpath, exc) from exc


def make_entry(root: Path, relpath: str) -> Entry | None:
    """Return the current Entry of `relpath` under `root` (lstat + hash), or None if it is gone.

    Raises:
        SourceReadError: it is there but cannot be read; SourceListError: its directory cannot
            be opened or searched.
    """
    with entry_dir(root, relpath) as dir_fd:
        st = lstat_in(root, relpath, dir_fd)
        return None if st is None else entry_from_stat(root, relpath, st, dir_fd=dir_fd)


@contextmanager
def entry_dir(root: Path, relpath: str) -> Iterator[int | None]:
    """The open directory that holds `relpath` below `root`, none of its components followed
    (`open_dir_in`): an event's path whose directory was swapped for a link is read there, or
    as gone, never through the link. None for the root itself (read by its path, which may be
    the operator's link) and -1 for a directory that is gone or no real directory any more.

    Raises:
        SourceListError: that directory is there but cannot be opened (`open_dir_below`).
    """
    head, _, name = relpath.rpartition("/")
    if not name:
        yield None
        return
    dir_fd = open_dir_below(root, head)
    if dir_fd is None:
        yield -1
        return
    try:
        yield dir_fd
    finally:
        os.close(dir_fd)


def open_dir_below(root: Path, dir_rel: str) -> int | None:
    """A descriptor of the directory `dir_rel` to list (the root may be the operator's link, no
    directory below it is followed, wherever on the way it was swapped for a link); None if it
    is gone or is no real directory any more (the root gone too: the mass-delete guard holds what
    that rescan finds). A root that is a link loop raises OSError.

    Raises:
        SourceListError: it (or a directory on its way) is there but cannot be opened (EACCES,
            EMFILE, EIO...): not gone, so its entries must not be taken for deleted.
    """
    try:
        return open_dir_in(root, dir_rel)
    except _GONE:
        pass
    except OSError as exc:
        if exc.errno not in GONE_ERRNOS:
            raise SourceListError.of(dir_rel, exc) from exc
        if not dir_rel or exc.errno not in (errno.ELOOP, errno.EXDEV):
            raise
    logger.debug("directory vanished while scanning: %s", dir_rel)
    return None


def lstat_in(root: Path, relpath: str, dir_fd: int | None) -> os.stat_result | None:
    """lstat of `relpath` in `dir_fd` as `entry_dir` gave it (-1: its directory is gone), or of
    root/relpath without one; None if it is gone.

    Raises:
        SourceListError: the directory holding it cannot be searched (a directory of mode 0600:
            EACCES), or another error that does not mean gone (EIO): it is looked at again.
    """
    try:
        if dir_fd is None:
            return os.lstat(root / relpath)
        if dir_fd < 0:
            return None
        return os.stat(relpath.rpartition("/")[2], dir_fd=dir_fd, follow_symlinks=False)
    except _GONE:
        return None
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            return None
        raise SourceListError.of(relpath.rpartition("/")[0], exc) from exc


class TreeScan:
    """One scan of a subtree: a pre-order walk, merged per directory with the manifest.

    Besides the changes (`out`), it notes the bookkeeping: `stat_notes`, the (path, inode
    number, ctime) of files that did not change but whose manifest entry has another inode
    number or ctime (an older manifest, a file replaced or rewritten by an equal one), and
    `linked`, the new
    entries of changed files that have other hard links. `unreadable`: the files it could not
    read to hash (SourceReadError) and the directories it could not list (SourceListError),
    left as the manifest has them (never read as empty: nothing below such a directory is taken
    for deleted), for the caller to look at again.
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        path_filter: PathFilter,
        policy: TargetPolicy | None = None,
        cache: MappingContent | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.filter = path_filter
        self.policy = policy  # a target's (watch/target_policy.py): its disk read through it
        self.cache = cache  # a source's: small files' content read to hash, for its links
        self.out: list[PendingChange] = []
        self.stat_notes: list[tuple[str, int, int]] = []
        self.linked: list[Entry] = []
        self.unreadable: list[SourceReadError] = []

    def visit(
        self,
        relpath: str,
        st: os.stat_result,
        old: Entry | None,
        dir_fd: int | None = None,
        read: SmallRead | None = None,
        same: bool | None = None,
    ) -> bool:
        """Compare one disk entry with the manifest; return True if it is a directory to walk.
        `dir_fd`: an open descriptor of the directory that holds it, if the caller has one;
        `read`: its content read ahead, and `same`: whether it has the manifest's stat, if
        `_read_ahead` told already."""
        kind = _kind_of(st)
        if not kind:
            if old is not None:
                self.out.append(PendingChange(op="delete", path=relpath, base_hash=old.hash))
            return False
        if self.policy is not None and kind != "l" and dir_fd is not None:
            self._tighten(relpath, st, dir_fd)
        if (
            old is not None
            and kind != "l"
            and (same_stat(old, kind, st, self.policy) if same is None else same)
        ):
            if kind == "f" and (old.ino, old.ctime_ns) != (st.st_ino, st.st_ctime_ns):
                self.stat_notes.append((relpath, st.st_ino, st.st_ctime_ns))
            return kind == "d"
        try:
            new = entry_from_stat(
                self.root, relpath, st, dir_fd=dir_fd, cache=self.cache, read=read
            )
        except SourceReadError as err:
            self.unreadable.append(err.bare())
            return False
        if new is None:
            return False
        if (
            old is not None
            and self.policy is not None
            and self.policy.same_mode(old.mode, new.mode)
        ):
            new = msgspec.structs.replace(new, mode=old.mode)  # the mode asked, as recorded
        if new.kind == "l" and not self.filter.utf8_link_target(relpath, new.link_target):
            if old is not None:  # not replicated any more: like a link that became a FIFO
                self.out.append(PendingChange(op="delete", path=relpath, base_hash=old.hash))
            return False
        if new.kind == "l" and self.policy is not None and dir_fd is not None:
            self._remove_refused_link(relpath, new.link_target, dir_fd)
        changes = changes_for(old, new)
        self.out.extend(changes)
        if kind == "f":
            if (
                not changes
                and old is not None
                and (old.ino, old.ctime_ns) != (new.ino, new.ctime_ns)
            ):
                self.stat_notes.append((relpath, new.ino, new.ctime_ns))
            elif changes and st.st_nlink > 1:
                self.linked.append(new)
        return kind == "d"

    def _tighten(self, relpath: str, st: os.stat_result, dir_fd: int) -> None:
        """A target's: remove the bits its policy removes from what holds them (written before
        the policy, or by someone else). The manifest goes on recording the mode asked."""
        assert self.policy is not None
        on_disk = permission_bits(st.st_mode)
        wanted = self.policy.disk_mode(on_disk)
        if wanted != on_disk:
            tighten_in(dir_fd, relpath.rpartition("/")[2], wanted)

    def _remove_refused_link(self, relpath: str, target: str, dir_fd: int) -> None:
        """A target's: a link its policy refuses (made before the policy, or while it was "any")
        goes from disk and stays recorded only, as a refused Symlink (transfer/_tree_ops.py
        _refuse_link): no comparison with the source sends it again, nothing serves it."""
        assert self.policy is not None
        why = self.policy.refuses_link(relpath, target)
        if not why:
            return
        name = relpath.rpartition("/")[2]
        try:
            if stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):  # not a file swapped in
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("could not remove refused symlink %s: %s", relpath, exc)
            return
        logger.warning("removed symlink %s found on disk: %s", relpath, why)

    def walk(self, top: str) -> None:
        stack = [top]
        while stack:
            stack.extend(reversed(self.walk_dir(stack.pop())))

    def walk_dir(self, dir_rel: str) -> list[str]:
        """Diff one directory's children; return the child directories to walk next.

        The directory is opened once, not followed if it became a symlink since its parent
        listed it (nothing outside the folder is read): its children are listed, stat'ed and
        read relative to it, which spares the kernel a walk of the whole path per file.
        """
        known = {e.path: e for e in self.manifest.children(dir_rel)}
        try:
            dir_fd = open_dir_below(self.root, dir_rel)
        except SourceListError as err:  # not empty: nothing below it is compared this time
            self.unreadable.append(err.bare())
            return []
        try:
            try:
                on_disk = self._list_dir(dir_rel, dir_fd) if dir_fd is not None else {}
            except SourceListError as err:
                self.unreadable.append(err.bare())
                return []
            for path in sorted(set(known) - set(on_disk)):
                if self.policy is not None and self.policy.keeps_absent(
                    known[path].kind, path, known[path].link_target
                ):
                    continue  # a link the policy refused: recorded, never on disk
                self.out.append(PendingChange(op="delete", path=path, base_hash=known[path].hash))
            subdirs: list[str] = []
            if dir_fd is None:  # nothing was listed
                return subdirs
            for path, same, read in self._read_ahead(sorted(on_disk), on_disk, known, dir_fd):
                if self.visit(path, on_disk[path], known.get(path), dir_fd, read, same):
                    subdirs.append(path)
            return subdirs
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    def _read_ahead(
        self,
        paths: list[str],
        on_disk: dict[str, os.stat_result],
        known: dict[str, Entry],
        dir_fd: int,
    ) -> Iterator[tuple[str, bool | None, SmallRead | None]]:
        """`paths` (children of `dir_fd`) in order, each with, for a small file, whether it has
        the manifest's stat (`visit` asks no more) and, if not (`visit` hashes it), its content
        read ahead: READ_AHEAD_FILES paths or about READ_AHEAD_BYTES at a time, read in one call
        (`read_ahead`) before they are visited. A first scan of 10,000 files of 4 KiB gave up
        the GIL 50,000 times for them."""
        start = 0
        while start < len(paths):
            end, nbytes, wanted, verdicts = start, 0, [], []
            while end < len(paths) and end - start < READ_AHEAD_FILES and nbytes < READ_AHEAD_BYTES:
                path, st = paths[end], on_disk[paths[end]]
                end += 1
                same = None
                if stat.S_ISREG(st.st_mode) and st.st_size <= SMALL_FILE_BYTES:
                    old = known.get(path)
                    same = old is not None and same_stat(old, "f", st, self.policy)
                    if not same:
                        wanted.append((path.rpartition("/")[2], st.st_size))
                        nbytes += st.st_size
                verdicts.append(same)
            reads = read_ahead(dir_fd, wanted)
            for path, same in zip(paths[start:end], verdicts, strict=True):
                yield path, same, reads.get(path.rpartition("/")[2])
            start = end

    def _list_dir(self, dir_rel: str, dir_fd: int) -> dict[str, os.stat_result]:
        """The accepted children of the open directory `dir_rel`, with their lstat.

        Raises:
            SourceListError: the listing failed (EMFILE, EIO), or an entry could not be stat'ed
                for another cause than gone (EACCES: a directory that can be read but not
                searched, mode 0600): a partial listing would read the rest as deleted.
        """
        found: dict[str, os.stat_result] = {}
        try:
            with os.scandir(dir_fd) as it:
                for de in it:
                    relpath = join(dir_rel, de.name)
                    try:
                        st = de.stat(follow_symlinks=False)
                    except _GONE:
                        continue
                    if self.filter.accepts(relpath, is_dir=stat.S_ISDIR(st.st_mode)):
                        found[relpath] = st
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                raise
            raise SourceListError.of(dir_rel, exc) from exc
        return found


def scan_tree(
    root: Path, manifest: Manifest, path_filter: PathFilter, *, subdir: str = ""
) -> list[PendingChange]:
    """Diff the tree at root/subdir against the manifest, without modifying the manifest.

    Returns changes in an order that replays correctly on a target: within each directory the
    deletes of vanished children come first (one per vanished subtree), then each child in name
    order, a directory's mkdir always before anything inside it. `subdir` may name a file, a
    directory or a path that no longer exists.
    """
    return scan(root, manifest, path_filter, subdir=subdir).out


def scan(
    root: Path,
    manifest: Manifest,
    path_filter: PathFilter,
    *,
    subdir: str = "",
    policy: TargetPolicy | None = None,
    cache: MappingContent | None = None,
) -> TreeScan:
    """Like scan_tree, but return the whole TreeScan: the changes and the hard-link notes.
    `policy`: a target's, for its start-up scan; `cache`: a source's (`TreeScan`)."""
    result = TreeScan(root, manifest, path_filter, policy, cache)
    if not subdir:
        result.walk("")
        return result
    if not path_filter.utf8_path(subdir):
        return result  # never in the manifest, and SQLite cannot even look it up
    try:
        is_dir = _visit_top(result, subdir)
    except SourceListError as err:  # its directory cannot be opened: nothing of it changes now
        result.unreadable.append(err.bare())
        return result
    if is_dir:
        result.walk(subdir)
    return result


def _visit_top(result: TreeScan, subdir: str) -> bool:
    """Visit `subdir` itself, the top of a scan; return True if it is a directory to walk.

    Raises:
        SourceListError: the directory holding it cannot be opened or searched.
    """
    old = result.manifest.get(subdir)
    with entry_dir(result.root, subdir) as dir_fd:
        st = lstat_in(result.root, subdir, dir_fd)
        accepted = st is not None and result.filter.accepts(subdir, is_dir=stat.S_ISDIR(st.st_mode))
        if st is None or not accepted:
            if old is not None:
                result.out.append(PendingChange(op="delete", path=subdir, base_hash=old.hash))
            return False
        return result.visit(subdir, st, old, dir_fd if dir_fd is not None and dir_fd >= 0 else None)
