"""The changes that turn a manifest entry into what is on disk: a stat compared, an entry diffed.

Moved out of watch/scanner.py, whose scans (and the recorder's checks) decide with them.
"""

from __future__ import annotations

import os
import stat

from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import Entry, mtime_ns_of, permission_bits, same_version
from relaysync.watch.target_policy import TargetPolicy


def same_stat(
    old: Entry,
    kind: str,
    st: os.stat_result,
    policy: TargetPolicy | None = None,
    *,
    by_ctime: bool = True,
) -> bool:
    """Return True if an lstat result matches the manifest entry without reading content.

    `policy` (a target's): a mode on disk is the same as the manifest's when it is what the
    policy made of it (the manifest records the mode the source asked for).

    A file under another inode number than the manifest's (0: not known, from an older release)
    is not the same: it was replaced, by rename (`rsync --checksum`, `cp -p` + `mv`, a
    reproducible build's fixed mtimes), and may keep size and mtime with new content; its hash
    tells (an equal one is no change, just an inode fix).

    A file whose ctime is not the manifest's (0: not known, from an older release or a
    target's receiver) is not the same either: written in place with its size and mtime kept
    (`cp -p` or `rsync --inplace -t` of a reproducible build while nothing watched), or only
    chmod'ed, linked or chown'ed; its hash tells. `by_ctime=False` for a file just renamed,
    which rename(2) gives a new ctime, and whose writes the watcher reports itself."""
    if old.kind != kind:
        return False
    if kind == "f" and old.ino and old.ino != st.st_ino:
        return False
    if kind == "f" and by_ctime and old.ctime_ns and old.ctime_ns != st.st_ctime_ns:
        return False
    on_disk = permission_bits(st.st_mode)
    same_mode = old.mode == on_disk if policy is None else policy.same_mode(old.mode, on_disk)
    if kind == "d":
        # Directory mtimes move with every child change; only mode is replicated for them.
        return same_mode
    return same_mode and (old.size, old.mtime_ns) == (st.st_size, mtime_ns_of(st))


def _kind_of(st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "d"
    if stat.S_ISLNK(st.st_mode):
        return "l"
    return "f" if stat.S_ISREG(st.st_mode) else ""


def diff_entry(old: Entry | None, new: Entry) -> PendingChange | None:
    """Return the change that turns manifest state `old` into `new`, or None if they are equal.

    The inode number is not compared: a file replaced by an equal one is no change to replicate.
    """
    if same_version(old, new):
        return None
    base = old.hash if old is not None else b""
    if new.kind == "d":
        if old is not None and old.kind == "d":
            return (
                None if old.mode == new.mode else PendingChange(op="attr", path=new.path, entry=new)
            )
        return PendingChange(op="mkdir", path=new.path, entry=new)
    if new.kind == "l":
        return PendingChange(op="symlink", path=new.path, entry=new, base_hash=base)
    if old is not None and old.kind == "f" and old.hash == new.hash:
        return PendingChange(op="attr", path=new.path, entry=new, base_hash=base)
    return PendingChange(op="write", path=new.path, entry=new, base_hash=base)


def changes_for(old: Entry | None, new: Entry) -> list[PendingChange]:
    """Like diff_entry, but first deletes `old` when the kind changed (a file became a dir...)."""
    out = []
    if old is not None and old.kind != new.kind:
        out.append(PendingChange(op="delete", path=old.path, base_hash=old.hash))
        old = None
    change = diff_entry(old, new)
    if change is not None:
        out.append(change)
    return out
