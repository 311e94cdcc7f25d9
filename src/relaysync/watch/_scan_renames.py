"""Renames in a scan's changes: a file the scan found gone and one it found new under the same
inode number, with the same content, size, mode and mtime, is one file renamed.

A scan diffs the disk with the manifest, so it sees a rename as a delete and a new file, and the
targets would get the file whole. The watcher reports renames as such, but its events can lose
the race to a scan: a rename while the first sync's closing rescan, a periodic rescan or an
overflow's runs, or while the source was down, reached the scan before its events did (their
rename then finds the manifest up to date). Sent as a rename instead, it costs the targets no
copy, and the source's delta signature moves with it. The target checks that what it holds at
the old name is the version renamed, and asks for the file whole if not.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

import msgspec

from relaysync.watch.changes import PendingChange
from relaysync.watch.manifest import Entry, same_version


def pair_renames(
    changes: Sequence[PendingChange],
    known: Callable[[str], Entry | None],
    settled: Collection[str] = (),
    with_inode: Callable[[int], Iterable[str]] | None = None,
) -> list[PendingChange]:
    """`changes` (a scan's) with each (delete of a file, write of a new file) pair that is one
    file renamed made one rename, at the write's place (after the directories it needs).

    `known(path)`: the entry a deleted path had (the manifest's); `settled`: paths the caller
    changed already, before the scan (neither name of a pair); `with_inode(ino)`: the paths the
    manifest has with that inode number: when the new files are fewer than the deletes, only the
    deletes among those of the new files' inode numbers are asked `known` (a mass delete and a
    few new files: a lookup or two per new file, not one per delete). A delete whose path comes
    again in `changes` (a file replaced by a directory) is never paired, nor is an inode number
    that more than one new file has (hard links made meantime: no telling which is the move).
    """
    arrived: dict[int, list[int]] = {}  # inode number -> indexes of writes of files
    for i, change in enumerate(changes):
        entry = change.entry
        if change.op == "write" and entry is not None and entry.kind == "f" and entry.ino:
            arrived.setdefault(entry.ino, []).append(i)
    if not arrived:
        return list(changes)
    again = {c.path for c in changes if c.op != "delete"}
    deletes = [
        i
        for i, c in enumerate(changes)
        if c.op == "delete" and c.path not in again and c.path not in settled
    ]
    if with_inode is not None and len(deletes) > len(arrived):
        could = {path for ino in arrived for path in with_inode(ino)}
        deletes = [i for i in deletes if changes[i].path in could]
    renames: dict[int, PendingChange] = {}  # index of the write -> the rename in its place
    paired: set[int] = set()  # indexes of the deletes folded into a rename
    for i in deletes:
        change = changes[i]
        old = known(change.path)
        if old is None or old.kind != "f" or not old.ino:
            continue
        writes = arrived.get(old.ino, [])
        if len(writes) != 1 or writes[0] in renames:
            continue
        write = changes[writes[0]]
        new = write.entry
        assert new is not None  # arrived holds writes with an entry only
        if new.path in settled:
            continue
        if not same_version(msgspec.structs.replace(old, path=new.path), new):
            continue  # changed too (or another file under a reused inode number): whole
        renames[writes[0]] = PendingChange(
            op="rename", path=change.path, new_path=new.path, entry=new, base_hash=write.base_hash
        )
        paired.add(i)
    return [renames.get(i, c) for i, c in enumerate(changes) if i not in paired]
