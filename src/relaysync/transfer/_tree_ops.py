"""The ops on a target's tree besides files: delete, mkdir, symlink, rename, attributes, erase."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import Any

import msgspec
import xxhash

from relaysync._util.fs import chmod_fd, names_in, remove_tree_at
from relaysync.errors import UnsafePath
from relaysync.protocol.messages import (
    CommitRecord,
    Delete,
    Erase,
    ErrorCode,
    MakeDir,
    Rename,
    SetAttr,
    Symlink,
)
from relaysync.transfer import staging
from relaysync.transfer._failures import TransientFailure
from relaysync.transfer._session_hooks import SessionHooks
from relaysync.transfer.paths import DirHandles, check_relpath, parent_of
from relaysync.transfer.removal import RemovalSurvey
from relaysync.transfer.target_folder import TargetFolder
from relaysync.transfer.versions import VersionKeeper
from relaysync.watch.manifest import Entry, mtime_ns_of, permission_bits


class TreeOps(SessionHooks):
    """The non-file ops of a `ReceiverSession` (a mixin: the session holds the state they use)."""

    folder: TargetFolder
    _keeper: VersionKeeper | None
    _applied: list[CommitRecord]
    _dirs: DirHandles
    sender_resends_renames: bool

    def _apply_op(self, msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase) -> None:
        started = time.monotonic()
        op = _OP_NAMES[type(msg)]
        self._drop_partials_of(msg)
        try:
            extra = self._apply_op_unchecked(msg)
        except UnsafePath as exc:
            self._refuse(msg.seq, op, msg.path, str(exc), started, _changed_at(msg))
            return
        except FileNotFoundError as exc:
            self._refuse(
                msg.seq, op, msg.path, f"not found: {exc.filename}", started, _changed_at(msg)
            )
            return
        except OSError as exc:
            self._os_failed(msg.seq, op, msg.path, exc, started, _changed_at(msg))
            return
        except (OverflowError, ValueError) as exc:
            # A value the target cannot apply or store (an mtime past what utime or SQLite take):
            # the same op would fail again at every retry, so it is refused, not the session.
            self._refuse(msg.seq, op, msg.path, f"cannot apply: {exc}", started, _changed_at(msg))
            return
        record = self._record(msg.seq, op, msg.path, started=started, changed_at=_changed_at(msg))
        if isinstance(msg, Rename):  # the purger needs the new name too
            extra = {**extra, "new_path": msg.new_path}
        # ...and what a delete, rename or erase removed (transfer/removal.py)
        self._applied.append(msgspec.structs.replace(record, **extra) if extra else record)
        self._note(msg.seq)

    def _drop_partials_of(self, msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase) -> None:
        """A partial of what this op replaces will never be resumed: its file goes now (an erase
        drops those of each child it removes)."""
        match msg:
            case Delete() | Symlink():
                self.folder.drop_partials_under(msg.path)
            case Rename():  # the moved file is resent under its new name if the target lacks it
                self.folder.drop_partials_under(msg.path)
                self.folder.drop_partials_under(msg.new_path)
            case MakeDir():  # a file there becomes this directory; what is below it stays
                self.folder.drop_partial(msg.path)

    def _apply_op_unchecked(
        self, msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase
    ) -> dict[str, Any]:
        """Apply the op; return the fields its commit record gets besides the common ones."""
        manifest = self.folder.manifest
        match msg:
            case Delete():
                return self._remove(msg)
            case MakeDir():
                self._make_dir(msg)
            case Symlink():
                return self._make_link(msg)
            case Rename():
                return self._rename(msg)
            case SetAttr():
                check_relpath(msg.path)
                entry = manifest.get(msg.path)
                if not self._recorded_only(entry, msg.path):
                    self._set_attrs(msg)
                if entry is not None:
                    manifest.put_many([_with_attrs(entry, msg.mode, msg.mtime_ns)])
            case Erase():
                return self._erase(msg)
        return {}

    def _set_attrs(self, msg: SetAttr) -> None:
        """Mode (not of a link) and mtime of what is at the path, in its parent held open and
        through a descriptor of it: a name swapped for a link meanwhile is never followed."""
        parent, name = self._dirs.get(parent_of(msg.path)), msg.path.rpartition("/")[2]
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                chmod_fd(fd, self.folder.policy.disk_mode(msg.mode))
        finally:
            os.close(fd)
        ns = (msg.mtime_ns, msg.mtime_ns)
        os.utime(name, ns=ns, dir_fd=parent, follow_symlinks=False)

    def _at(self, path: str, *, create: bool = False) -> tuple[int, str]:
        """`path`'s parent held open (`DirHandles`: its missing directories made if `create`) and
        its name there: what is done with both is done in that real directory, whatever a local
        user swaps in for a name on the way meanwhile.

        Raises:
            UnsafePath: a directory on the way is a symlink or not a directory.
            FileNotFoundError: the parent is missing (and not `create`).
        """
        return self._dirs.get(parent_of(path), create=create), path.rpartition("/")[2]

    def _lstat(self, path: str) -> os.stat_result | None:
        """The lstat of `path` in its parent held open; None if nothing is there."""
        try:
            parent, name = self._at(path)
            return os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return None

    def _fsync(self, *dir_fds: int) -> None:
        if self.folder.durable:
            for fd in dict.fromkeys(dir_fds):
                staging.fsync_dir(fd)

    def _remove_at(self, path: str, *, sync: bool = True) -> None:
        """Remove `path` and what is under it in its parent held open (never through a link);
        its parent is synced after if the folder is durable and `sync`."""
        try:
            parent, name = self._at(path)
        except FileNotFoundError:
            return  # nothing there to remove
        remove_tree_at(parent, name)
        if sync:
            self._fsync(parent)

    def _rmdir_at(self, path: str) -> None:
        """Remove the directory `path` in its parent held open if it is empty."""
        try:
            parent, name = self._at(path)
            os.rmdir(name, dir_fd=parent)
        except OSError:
            pass  # not empty (another source's files), gone, or not a directory

    def _survey(self, survey: RemovalSurvey, path: str) -> str:
        """`survey.tree` of `path` in its parent held open (not as the record's own path); ""
        if its parent is missing."""
        try:
            parent, name = self._at(path)
        except FileNotFoundError:
            return ""
        return survey.tree(parent, name, path, itself=False)

    def _keep_version(self, path: str) -> None:
        """Keep what is at `path` (the version keeper, if the mapping keeps versions), read in
        its parent held open: never a file outside the folder through a swapped directory."""
        if self._keeper is None:
            return
        try:
            parent, name = self._at(path)
        except FileNotFoundError:
            return
        self._keeper.save(parent, name, path)

    def _remove(self, msg: Delete) -> dict[str, Any]:
        """Remove the path and what is under it, in its parent held open (never through a link)."""
        check_relpath(msg.path)
        survey = RemovalSurvey(root=self.folder.root)
        kind = self._survey(survey, msg.path)  # before the keeper takes it
        self._keep_version(msg.path)
        self._remove_at(msg.path)
        self.folder.manifest.remove_tree(msg.path)
        return survey.record_fields(kind)

    def _make_dir(self, msg: MakeDir) -> None:
        check_relpath(msg.path)
        parent, name = self._dirs.get(parent_of(msg.path), create=True), msg.path.rpartition("/")[2]
        fd = _real_dir_at(parent, name)
        try:
            chmod_fd(fd, self.folder.policy.disk_mode(permission_bits(msg.mode) or 0o755))
        finally:
            os.close(fd)
        if self.folder.durable:
            staging.fsync_dir(parent)
        self.folder.manifest.put_many(
            [Entry(path=msg.path, kind="d", mode=permission_bits(msg.mode))]
        )

    def _make_link(self, msg: Symlink) -> dict[str, Any]:
        """Make the link; return what was at its path and what lies under its old and new
        target (a link to a directory stands for it: transfer/removal.py)."""
        check_relpath(msg.path)
        refused = self.folder.policy.refuses_link(msg.path, msg.target)
        if refused:
            self._refuse_link(msg)
            raise UnsafePath(msg.path, refused)
        parent, name = self._at(msg.path, create=True)
        survey = RemovalSurvey(root=self.folder.root)
        kind = survey.tree(parent, name, msg.path, itself=False)
        _link_at(parent, name, msg.target)
        new_kind = survey.tree(parent, name, msg.path, itself=False)
        self._fsync(parent)
        digest = xxhash.xxh3_128(msg.target.encode("utf-8", "surrogateescape")).digest()
        st = os.lstat(name, dir_fd=parent)
        self.folder.manifest.put_many(
            [
                Entry(
                    path=msg.path,
                    kind="l",
                    hash=digest,
                    link_target=msg.target,
                    mtime_ns=mtime_ns_of(st),
                )
            ]
        )
        return survey.record_fields("d" if "d" in (kind, new_kind) else kind or "l")

    def _refuse_link(self, msg: Symlink) -> None:
        """A link the policy refuses: what the path held goes (the source has no such version
        any more), and the manifest records the link as asked, so that no comparison with the
        source sees a difference and sends it again and again; the start-up scan keeps it."""
        self._keep_version(msg.path)
        self._remove_at(msg.path)
        self.folder.manifest.remove_tree(msg.path)
        digest = xxhash.xxh3_128(msg.target.encode("utf-8", "surrogateescape")).digest()
        self.folder.manifest.put_many(
            [Entry(path=msg.path, kind="l", hash=digest, link_target=msg.target)]
        )

    def _recorded_only(self, entry: Entry | None, path: str) -> bool:
        """Whether `entry` is a link the policy refused: in the manifest, never on disk."""
        return (
            entry is not None
            and self.folder.policy.keeps_absent(entry.kind, entry.path, entry.link_target)
            and self._lstat(path) is None
        )

    def _rename(self, msg: Rename) -> dict[str, Any]:
        """Move the path (and what is under it); return what moved away from its old name."""
        check_relpath(msg.path)
        check_relpath(msg.new_path)
        if msg.new_path.startswith(f"{msg.path}/") or msg.path.startswith(f"{msg.new_path}/"):
            # into itself (EINVAL for ever) or over its own ancestor (which would delete it first)
            raise UnsafePath(
                msg.new_path, f"a rename of {msg.path!r} into itself or over its ancestor"
            )
        if self._lstat(msg.path) is None:
            return self._rename_missing(msg)
        self._check_renamed_version(msg)
        # Both ends in their parents held open: a directory on either way swapped for a link
        # after these opens moves nothing out of the folder, nor anything from outside in.
        src_parent, src_name = self._at(msg.path)
        dst_parent, dst_name = self._at(msg.new_path, create=True)
        if self._keeper is not None:  # a rename over a file replaces it
            self._keeper.save(dst_parent, dst_name, msg.new_path)
        survey = RemovalSurvey(root=self.folder.root)
        kind = survey.tree(src_parent, src_name, msg.path, itself=False)
        if (
            survey.tree(dst_parent, dst_name, msg.new_path, itself=False) == "d"
        ):  # replaced: goes too
            kind = "d"
        staging.replace_at(src_parent, src_name, dst_parent, dst_name)
        self._fsync(src_parent, dst_parent)
        self.folder.manifest.rename_tree(msg.path, msg.new_path)
        self._refuse_moved_links(msg)
        return survey.record_fields(kind)

    def _check_renamed_version(self, msg: Rename) -> None:
        """Refuse a file's rename if what this target holds at its old name is not the version
        renamed (`msg.hash`, by our manifest): the source read a newer file at that path for an
        earlier write (a log rotated while the link was behind), or a replay renames again what
        a later write put there. Moved, it would sit at the new name as that version, for good.

        Raises:
            TransientFailure: BASE_MISMATCH, if the sender resends the new path whole then.
        """
        if not msg.hash or not self.sender_resends_renames:
            return
        held = self.folder.manifest.get(msg.path)
        if held is not None and held.kind == "f" and held.hash == msg.hash:
            return
        raise TransientFailure(
            msg.seq,
            ErrorCode.BASE_MISMATCH,
            f"{msg.path} here is not the version renamed: send {msg.new_path} whole",
        )

    def _rename_missing(self, msg: Rename) -> dict[str, Any]:
        """A rename whose source is not here: applied before, to be sent whole, or refused."""
        held = self.folder.manifest.get(msg.new_path)
        there = self._lstat(msg.new_path) is not None
        if there and (not msg.hash or (held is not None and held.hash == msg.hash)):
            return {}  # applied before (a replay after a crash): nothing to do
        if msg.hash and self.sender_resends_renames:
            # Never got here (an atomic save's temp file was gone when the link read it; a
            # compare ran meanwhile): the new path must come whole, or the old version stays.
            raise TransientFailure(
                msg.seq,
                ErrorCode.BASE_MISMATCH,
                f"{msg.path} is not here to rename: send {msg.new_path} whole",
            )
        if there:
            return {}  # an older sender cannot resend it: the next comparison repairs it
        raise FileNotFoundError(errno.ENOENT, "rename source missing", msg.path)

    def _refuse_moved_links(self, msg: Rename) -> None:
        """Check the links a rename moved (the renamed link, those below a renamed directory) at
        their new paths: one that now points outside the folder (moved up) is refused as a
        Symlink would be: removed from disk, recorded only in the manifest, a failed record."""
        started, policy, manifest = time.monotonic(), self.folder.policy, self.folder.manifest
        if policy.symlinks != "safe":
            return
        moved = manifest.get(msg.new_path)
        if moved is None or moved.kind not in ("l", "d"):
            return
        links = [moved] if moved.kind == "l" else manifest.links_under(msg.new_path)
        for link in links:
            refused = policy.refuses_link(link.path, link.link_target)
            if refused and self._unlink_link(link.path):
                self._refuse(msg.seq, "symlink", link.path, refused, started)

    def _unlink_link(self, path: str) -> bool:
        """Remove the symlink at `path` in its parent held open; False if no link is there."""
        try:
            parent = self._dirs.get(parent_of(path))
            name = path.rpartition("/")[2]
            if not stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
                return False
            os.unlink(name, dir_fd=parent)
        except (FileNotFoundError, UnsafePath):
            return False
        if self.folder.durable:
            staging.fsync_dir(parent)
        return True

    def _erase(self, msg: Erase) -> dict[str, Any]:
        """Remove the directory's children not in `keep`; return the files and links removed."""
        check_relpath(msg.path, allow_root=True)
        keep = set(msg.keep)
        try:  # never through a symlink (it may point anywhere): UnsafePath
            directory = self._dirs.get(msg.path)
        except FileNotFoundError:
            return {}
        survey = RemovalSurvey()
        for name in names_in(directory):  # listed, and each removed, in the directory held open
            if name in keep or name.startswith(staging.TEMP_PREFIX):
                continue
            rel = f"{msg.path}/{name}" if msg.path else name
            check_relpath(rel)
            survey.tree(directory, name, rel)
            if self._keeper is not None:
                self._keeper.save(directory, name, rel)
            remove_tree_at(directory, name)
            self.folder.manifest.remove_tree(rel)
            self.folder.drop_partials_under(rel)
        self._forget_absent(msg.path, keep, directory)
        self._fsync(directory)
        return survey.record_fields("d")

    def _forget_absent(self, rel_dir: str, keep: set[str], dir_fd: int) -> None:
        """Drop the manifest's children of `rel_dir` (held open as `dir_fd`) not in `keep` that
        are not on disk (a link the policy refused is recorded only): an Erase of them would
        otherwise come for ever."""
        manifest = self.folder.manifest
        for child in manifest.children(rel_dir):
            name = child.path.rpartition("/")[2]
            if name in keep:
                continue
            try:
                os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                manifest.remove_tree(child.path)


_OP_NAMES: dict[type, str] = {
    Delete: "delete",
    MakeDir: "mkdir",
    Symlink: "symlink",
    Rename: "rename",
    SetAttr: "attr",
    Erase: "erase",
}


def _real_dir_at(parent: int, name: str) -> int:
    """A descriptor of the directory `name` in `parent`, made if missing; anything else there
    (a file, a link) is replaced by it. Never followed if a link is swapped in meanwhile."""
    try:
        if not stat.S_ISDIR(os.lstat(name, dir_fd=parent).st_mode):
            remove_tree_at(parent, name)
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=parent)
    flags = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, os.O_RDONLY | flags, dir_fd=parent)
    except PermissionError:  # not readable by this (non-root) agent: its mode is still ours to set
        return os.open(name, os.O_PATH | flags, dir_fd=parent)


def _link_at(parent: int, name: str, target: str) -> None:
    """Put a link to `target` at `name` in the directory `parent` (held open): made under a
    temp name beside it, then renamed over what is there (a directory and its tree go)."""
    temp = str(staging.temp_name_for(Path(name)))
    os.symlink(target, temp, dir_fd=parent)
    try:
        staging.replace_at(parent, temp, parent, name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=parent)
        raise


def _with_attrs(entry: Entry, mode: int, mtime_ns: int) -> Entry:
    return Entry(
        path=entry.path,
        kind=entry.kind,
        size=entry.size,
        mtime_ns=mtime_ns,
        mode=permission_bits(mode),
        hash=entry.hash,
        link_target=entry.link_target,
    )


def _changed_at(msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase) -> float:
    return 0.0 if isinstance(msg, Erase) else msg.changed_at  # Erase is catch-up work only
