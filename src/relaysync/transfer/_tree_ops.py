"""The ops on a target's tree besides files: delete, mkdir, symlink, rename, attributes, erase."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import Any

import msgspec
import xxhash

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
from relaysync.transfer._failures import TransientFailure, _transient_os
from relaysync.transfer._session_hooks import SessionHooks
from relaysync.transfer.paths import check_relpath, parent_of, resolve_inside
from relaysync.transfer.removal import RemovalSurvey
from relaysync.transfer.target_folder import TargetFolder
from relaysync.transfer.versions import VersionKeeper
from relaysync.watch.manifest import Entry, mtime_ns_of, permission_bits


class TreeOps(SessionHooks):
    """The non-file ops of a `ReceiverSession` (a mixin: the session holds the state they use)."""

    folder: TargetFolder
    _keeper: VersionKeeper | None
    _applied: list[CommitRecord]
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
            raise _transient_os(msg.seq, msg.path, exc) from exc
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
        root, manifest = self.folder.root, self.folder.manifest
        match msg:
            case Delete():
                doomed = resolve_inside(root, msg.path)
                survey = RemovalSurvey(root=root)
                kind = survey.tree(doomed, msg.path, itself=False)  # before the keeper takes it
                if self._keeper is not None:
                    self._keeper.save(doomed)
                staging.remove_any(doomed)
                self._sync_dir(root, parent_of(msg.path))
                manifest.remove_tree(msg.path)
                return survey.record_fields(kind)
            case MakeDir():
                self._make_dir(msg)
            case Symlink():
                return self._make_link(msg)
            case Rename():
                return self._rename(msg)
            case SetAttr():
                path = resolve_inside(root, msg.path)
                if not path.is_symlink():
                    os.chmod(path, permission_bits(msg.mode))
                os.utime(path, ns=(msg.mtime_ns, msg.mtime_ns), follow_symlinks=False)
                entry = manifest.get(msg.path)
                if entry is not None:
                    manifest.put_many([_with_attrs(entry, msg.mode, msg.mtime_ns)])
            case Erase():
                return self._erase(msg)
        return {}

    def _sync_dir(self, root: Path, rel_dir: str) -> None:
        if self.folder.durable:
            directory = resolve_inside(root, rel_dir, allow_root=True)
            if directory.is_dir():
                staging.fsync_dir(directory)

    def _make_dir(self, msg: MakeDir) -> None:
        path = resolve_inside(self.folder.root, msg.path)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            staging.remove_any(path)
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, permission_bits(msg.mode) or 0o755)
        self._sync_dir(self.folder.root, parent_of(msg.path))
        self.folder.manifest.put_many(
            [Entry(path=msg.path, kind="d", mode=permission_bits(msg.mode))]
        )

    def _make_link(self, msg: Symlink) -> dict[str, Any]:
        """Make the link; return what was at its path and what lies under its old and new
        target (a link to a directory stands for it: transfer/removal.py)."""
        root = self.folder.root
        path = resolve_inside(root, msg.path)
        staging.make_parents(root, path)
        survey = RemovalSurvey(root=root)
        kind = survey.tree(path, msg.path, itself=False)
        temp = staging.temp_name_for(path)
        os.symlink(msg.target, temp)
        if path.is_dir() and not path.is_symlink():
            staging.remove_any(path)
        os.replace(temp, path)
        new_kind = survey.tree(path, msg.path, itself=False)
        self._sync_dir(root, parent_of(msg.path))
        digest = xxhash.xxh3_128(msg.target.encode("utf-8", "surrogateescape")).digest()
        st = os.lstat(path)
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

    def _rename(self, msg: Rename) -> dict[str, Any]:
        """Move the path (and what is under it); return what moved away from its old name."""
        root = self.folder.root
        source = resolve_inside(root, msg.path)
        dest = resolve_inside(root, msg.new_path)
        if msg.new_path.startswith(f"{msg.path}/") or msg.path.startswith(f"{msg.new_path}/"):
            # into itself (EINVAL for ever) or over its own ancestor (which would delete it first)
            raise UnsafePath(
                msg.new_path, f"a rename of {msg.path!r} into itself or over its ancestor"
            )
        if not os.path.lexists(source):
            held = self.folder.manifest.get(msg.new_path)
            if os.path.lexists(dest) and (
                not msg.hash or (held is not None and held.hash == msg.hash)
            ):
                return {}  # applied before (a replay after a crash): nothing to do
            if msg.hash and self.sender_resends_renames:
                # Never got here (an atomic save's temp file was gone when the link read it; a
                # compare ran meanwhile): the new path must come whole, or the old version stays.
                raise TransientFailure(
                    msg.seq,
                    ErrorCode.BASE_MISMATCH,
                    f"{msg.path} is not here to rename: send {msg.new_path} whole",
                )
            if os.path.lexists(dest):
                return {}  # an older sender cannot resend it: the next comparison repairs it
            raise FileNotFoundError(errno.ENOENT, "rename source missing", msg.path)
        staging.make_parents(root, dest)
        if self._keeper is not None and os.path.lexists(dest):
            self._keeper.save(dest)  # a rename over a file replaces it
        survey = RemovalSurvey(root=root)
        kind = survey.tree(source, msg.path, itself=False)
        if survey.tree(dest, msg.new_path, itself=False) == "d":  # what it replaces goes too
            kind = "d"
        if dest.is_dir() and not dest.is_symlink() and not source.is_dir():
            staging.remove_any(dest)
        os.replace(source, dest) if not dest.is_dir() else _replace_dir(source, dest)
        self._sync_dir(root, parent_of(msg.path))
        self._sync_dir(root, parent_of(msg.new_path))
        self.folder.manifest.rename_tree(msg.path, msg.new_path)
        return survey.record_fields(kind)

    def _erase(self, msg: Erase) -> dict[str, Any]:
        """Remove the directory's children not in `keep`; return the files and links removed."""
        directory = resolve_inside(self.folder.root, msg.path, allow_root=True)
        keep = set(msg.keep)
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            return {}
        if not stat.S_ISDIR(st.st_mode):  # never through a symlink: it may point anywhere
            raise UnsafePath(msg.path, "erase of something that is not a real directory")
        survey = RemovalSurvey()
        for child in os.scandir(directory):
            if child.name in keep or child.name.startswith(staging.TEMP_PREFIX):
                continue
            rel = f"{msg.path}/{child.name}" if msg.path else child.name
            check_relpath(rel)
            survey.tree(Path(child.path), rel)
            if self._keeper is not None:
                self._keeper.save(Path(child.path))
            staging.remove_any(Path(child.path))
            self.folder.manifest.remove_tree(rel)
            self.folder.drop_partials_under(rel)
        self._sync_dir(self.folder.root, msg.path)
        return survey.record_fields("d")


_OP_NAMES: dict[type, str] = {
    Delete: "delete",
    MakeDir: "mkdir",
    Symlink: "symlink",
    Rename: "rename",
    SetAttr: "attr",
    Erase: "erase",
}


def _replace_dir(source: Path, dest: Path) -> None:
    """Rename a directory over an existing one (rename(2) needs the target empty)."""
    if source.is_dir() and not source.is_symlink():
        staging.remove_any(dest)
    os.replace(source, dest)


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
