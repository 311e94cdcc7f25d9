"""Obsolete partials: a target's kept partials of versions a source will never send again.

After a catch-up comparison the source names them in the closing Checkpoint(s), and the target
removes each one that is still that exact version (target_folder.py `drop_obsolete_partials`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from relaysync.errors import JournalGap
from relaysync.protocol.messages import (
    MAX_OBSOLETE_PARTIALS,
    AnyMessage,
    Checkpoint,
    Partial,
    PartialRef,
)
from relaysync.watch.journal import Journal
from relaysync.watch.manifest import Manifest

# Records journaled since a comparison's head looked through for paths whose partials must stay;
# past this many, the partials wait for the next comparison (a busy source, seldom).
MAX_RECORDS_AFTER_HEAD = 65_536
OBSOLETE_BYTES = 1024 * 1024  # of paths per Checkpoint, far below MAX_MESSAGE_BYTES


def obsolete_partials(
    journal: Journal, manifest: Manifest, partials: Sequence[Partial], head: int
) -> list[PartialRef]:
    """The target's partials whose version we will never send (call in a worker thread).

    The comparison just sent every version `manifest` holds, and the target's watermark will be
    `head`, so a version is still to come only if the manifest holds it or a record journaled
    after `head` may send it: a partial at a path such a record writes, renames or moves (a
    directory above it) stays, as does every one while too many records are to be looked
    through. What is left was deleted here, or replaced by another version.
    """
    if not partials:
        return []
    touched = _paths_journaled_after(journal, head)
    if touched is None:
        return []
    obsolete = []
    for p in partials:
        if any(path in touched for path in _self_and_parents(p.path)):
            continue
        entry = manifest.get(p.path)
        if entry is None or entry.kind != "f" or entry.hash != p.hash:
            obsolete.append(PartialRef(path=p.path, hash=p.hash))
    return obsolete


def _paths_journaled_after(journal: Journal, head: int) -> set[str] | None:
    """Every path (old and new names) of the records after `head`; None if over
    MAX_RECORDS_AFTER_HEAD, or if some were released meanwhile (then they are not known)."""
    touched: set[str] = set()
    seen, after = 0, head
    try:
        while records := journal.read(after, 4096):
            seen += len(records)
            if seen > MAX_RECORDS_AFTER_HEAD:
                return None
            for record in records:
                touched.add(record.path)
                if record.new_path:
                    touched.add(record.new_path)
            after = records[-1].seq
    except JournalGap:
        return None
    return touched


def _self_and_parents(path: str) -> Iterator[str]:
    yield path
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        yield path


def closing_checkpoints(head: int, obsolete: Sequence[PartialRef]) -> list[AnyMessage]:
    """The Checkpoint(s) that close a comparison, naming the obsolete partials in bounded pieces."""
    out: list[AnyMessage] = []
    piece: list[PartialRef] = []
    size = 0
    for ref in obsolete:
        if len(piece) >= MAX_OBSOLETE_PARTIALS or size >= OBSOLETE_BYTES:
            out.append(Checkpoint(seq=head, obsolete=tuple(piece)))
            piece, size = [], 0
        piece.append(ref)
        size += len(ref.path.encode("utf-8", "surrogateescape")) + 32
    out.append(Checkpoint(seq=head, obsolete=tuple(piece)))
    return out
