"""Peer-link messages (source agent -> target agent): state, digests, change ops and acks."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from relaysync.constants import CHUNK_BYTES, MAX_NAME_BYTES, SMALL_FILE_BYTES
from relaysync.errors import ProtocolError
from relaysync.protocol._message_base import (
    MAX_DIGEST_DIRS,
    MAX_ERASE_KEEP,
    MAX_LISTING_ENTRIES,
    MAX_PARTIALS,
    MAX_ROUTE_NODES,
    MAX_SUBTREE_NODES,
    MAX_UNREADABLE_BYTES,
    MAX_UNREADABLE_PATHS,
    Int64,
    Message,
    UInt63,
    _check_changed_at,
    _check_hash,
    _check_int64,
    _check_non_negative,
    _check_path,
    _upto,
)

# --- Peer link: source agent -> target agent ---


class OpenMapping(Message, frozen=True, tag="open"):
    """Source -> target: start streaming changes of this mapping."""

    mapping_id: UInt63
    journal_id: str  # identifies the source's journal; a new one means old watermarks are void
    # names of the nodes the stream came through, source first
    route: Annotated[tuple[str, ...], _upto(MAX_ROUTE_NODES)] = ()
    route_epoch: UInt63 = 0  # the sender's routing table (MappingSpec.route_epoch)

    def validate(self) -> None:
        if len(self.route) > MAX_ROUTE_NODES or any(len(n) > MAX_NAME_BYTES for n in self.route):
            raise ProtocolError(f"open.route: over {MAX_ROUTE_NODES} hops or a name too long")

    def decoded_items(self) -> int:
        return len(self.route)


class Partial(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A large file the target received in part before a link or process died."""

    path: str
    hash: bytes  # the content hash the source announced for it
    size: UInt63  # bytes held, a whole number of chunks


class MappingState(Message, frozen=True, tag="state"):
    """Target -> source: where it stands."""

    mapping_id: UInt63
    watermark: UInt63  # highest seq committed with no gap, for this journal_id
    root_hash: bytes  # manifest root hash of the target tree
    # interrupted large files it can resume
    partials: Annotated[tuple[Partial, ...], _upto(MAX_PARTIALS)] = ()

    def decoded_items(self) -> int:
        return len(self.partials)


class DirEntry(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    name: str
    kind: Literal["f", "d", "l"]
    hash: bytes  # file content, directory (recursive), or link target hash
    size: UInt63 = 0
    mtime_ns: Int64 = 0
    mode: UInt63 = 0


class DirListing(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # relative, "" for the root
    entries: Annotated[tuple[DirEntry, ...], _upto(MAX_LISTING_ENTRIES)]
    exists: bool = True
    hash: bytes = b""  # the directory's own recursive hash (set for hashes_only requests)
    more: bool = False  # entries were cut to keep the reply small: ask again with after=<last name>


class DigestRequest(Message, frozen=True, tag="digest_req"):
    """Source -> target: send me your listings of these directories (top-down compare)."""

    mapping_id: UInt63
    dirs: Annotated[tuple[str, ...], _upto(MAX_DIGEST_DIRS)]
    hashes_only: bool = False  # just each directory's hash: the cheap first step of a compare
    after: str = ""  # continue a listing cut short: only entries named after this (one dir only)

    def validate(self) -> None:
        if len(self.dirs) > MAX_DIGEST_DIRS:  # a sender asks for 64 at a time (transfer/compare.py)
            raise ProtocolError(f"digest_req: over {MAX_DIGEST_DIRS} directories")
        if len(set(self.dirs)) != len(self.dirs):
            raise ProtocolError("digest_req: a directory asked for twice")
        for d in self.dirs:
            _check_path(d, "digest_req.dirs", allow_root=True)

    def decoded_items(self) -> int:
        return len(self.dirs)


class DigestReply(Message, frozen=True, tag="digest_reply"):
    mapping_id: UInt63
    listings: Annotated[
        tuple[DirListing, ...], _upto(MAX_DIGEST_DIRS)
    ]  # one per directory asked for

    def validate(self) -> None:
        if sum(len(listing.entries) for listing in self.listings) > MAX_LISTING_ENTRIES:
            raise ProtocolError(f"digest_reply: over {MAX_LISTING_ENTRIES} entries")

    def decoded_items(self) -> int:
        return len(self.listings) + sum(len(listing.entries) for listing in self.listings)


class FileStart(Message, frozen=True, tag="file"):
    """Source -> target: a whole file follows in FileChunk frames, then FileEnd."""

    seq: UInt63
    path: str
    size: UInt63
    mode: UInt63
    mtime_ns: Int64
    base_hash: bytes = b""  # hash of the version it replaces ("" if none known)
    expected_hash: bytes = (
        b""  # hash the source expects the content to have; names a resumable partial
    )
    offset: UInt63 = 0  # resume: the target already holds the first `offset` bytes in its partial
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "file.changed_at")
        _check_path(self.path, "file.path")
        _check_non_negative(self.size, "file.size")
        _check_int64(self.mtime_ns, "file.mtime_ns")
        _check_non_negative(self.seq, "file.seq")
        _check_hash(self.base_hash, "file.base_hash", optional=True)
        _check_hash(self.expected_hash, "file.expected_hash", optional=True)
        if not 0 <= self.offset <= self.size or (self.offset and not self.expected_hash):
            raise ProtocolError("file.offset: outside the file, or a resume without a hash")


MAX_DELTA_PARTS = 64


class DeltaStart(Message, frozen=True, tag="delta"):
    """Source -> target: a delta against the target's version `base_hash` follows in FileChunk
    frames (the delta stream), then FileEnd with the hash of the new whole file."""

    seq: UInt63
    path: str
    size: UInt63  # of the new file
    mode: UInt63
    mtime_ns: Int64
    base_hash: bytes
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )
    # The delta comes in this many parts, each a complete librsync delta of a consecutive range
    # of the new file (computed at once on several cores); each part's chunks start at offset 0.
    parts: UInt63 = 1
    # The new version's hash as the source journaled it (b"": unknown, or a peer of an older
    # release, which leaves it out; one decoding a newer peer's ignores it): names the resumable
    # partial the patched output goes to, a prefix of the new version however far it got.
    expected_hash: bytes = b""

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "delta.changed_at")
        if not 1 <= self.parts <= MAX_DELTA_PARTS:
            raise ProtocolError(f"delta.parts: {self.parts} is not in 1..{MAX_DELTA_PARTS}")
        _check_path(self.path, "delta.path")
        _check_non_negative(self.size, "delta.size")
        _check_int64(self.mtime_ns, "delta.mtime_ns")
        _check_non_negative(self.seq, "delta.seq")
        _check_hash(self.base_hash, "delta.base_hash")
        _check_hash(self.expected_hash, "delta.expected_hash", optional=True)


class FileChunk(Message, frozen=True, tag="chunk"):
    seq: UInt63
    offset: UInt63
    data: bytes
    codec: UInt63 = 0  # protocol codec id: 0 = plain

    def validate(self) -> None:
        _check_non_negative(self.offset, "chunk.offset")
        if len(self.data) > CHUNK_BYTES + 1024:
            raise ProtocolError(f"chunk: {len(self.data)} bytes is over the chunk limit")


class FileEnd(Message, frozen=True, tag="file_end"):
    """The strong hash of everything sent; the target commits only if it matches."""

    seq: UInt63
    hash: bytes

    def validate(self) -> None:
        _check_hash(self.hash, "file_end.hash")


class SmallFile(Message, frozen=True, tag="small_file"):
    """Source -> target: a whole file of at most SMALL_FILE_BYTES in one frame, with its strong hash.

    Stands for FileStart, one FileChunk and FileEnd: for 10,000 files of 4 KiB the three
    messages per file were a fifth of the receiver's Python time. Never a delta or a resume."""

    seq: UInt63
    path: str
    size: UInt63
    mode: UInt63
    mtime_ns: Int64
    data: bytes
    hash: bytes  # of the file's content (after decoding `data`); the target commits only if it matches
    codec: UInt63 = 0  # protocol codec id of `data`: 0 = plain
    base_hash: bytes = b""  # hash of the version it replaces ("" if none known)
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "small_file.changed_at")
        _check_path(self.path, "small_file.path")
        _check_non_negative(self.seq, "small_file.seq")
        _check_int64(self.mtime_ns, "small_file.mtime_ns")
        if not 0 <= self.size <= SMALL_FILE_BYTES or len(self.data) > SMALL_FILE_BYTES + 1024:
            raise ProtocolError(f"small_file: {self.size} bytes is over the small-file limit")
        if self.codec == 0 and len(self.data) != self.size:  # malformed, not corrupt: never retried
            raise ProtocolError(
                f"small_file: {len(self.data)} bytes of data for a size of {self.size}"
            )
        _check_hash(self.hash, "small_file.hash")
        _check_hash(self.base_hash, "small_file.base_hash", optional=True)


class FileAbort(Message, frozen=True, tag="file_abort", omit_defaults=True):
    """The source gave up on this file (it changed while read); the target discards it.

    With a `path`, the source could not read the file at all (SourceReadError, `reason` says
    why): the target records a failed attempt for the job log, and the source retries it.
    """

    seq: UInt63
    reason: str
    # "" = it changed while read (a newer version follows); left out on the wire then, so the
    # message is the bytes an older release sends and reads (which ignores a path it gets)
    path: str = ""

    def validate(self) -> None:
        if self.path:
            _check_path(self.path, "file_abort.path")


class Delete(Message, frozen=True, tag="delete"):
    """Delete a file, link or whole tree."""

    seq: UInt63
    path: str
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "delete.changed_at")
        _check_path(self.path, "delete.path")


class MakeDir(Message, frozen=True, tag="mkdir"):
    seq: UInt63
    path: str
    mode: UInt63 = 0o755
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "mkdir.changed_at")
        _check_path(self.path, "mkdir.path")


class Symlink(Message, frozen=True, tag="symlink"):
    seq: UInt63
    path: str
    target: str  # stored as is; never followed by the receiver
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "symlink.changed_at")
        _check_path(self.path, "symlink.path")
        _check_path(self.target, "symlink.target")


class Rename(Message, frozen=True, tag="rename"):
    seq: UInt63
    path: str
    new_path: str
    hash: bytes = b""  # content hash of a file being moved, to check the target holds the same
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "rename.changed_at")
        _check_path(self.path, "rename.path")
        _check_path(self.new_path, "rename.new_path")


class SetAttr(Message, frozen=True, tag="attr"):
    seq: UInt63
    path: str
    mode: UInt63
    mtime_ns: Int64
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "attr.changed_at")
        _check_path(self.path, "attr.path")
        _check_int64(self.mtime_ns, "attr.mtime_ns")


class Erase(Message, frozen=True, tag="erase"):
    """Remove every child of directory `path` whose name is not in `keep`."""

    seq: UInt63
    path: str  # "" for the root
    keep: Annotated[tuple[str, ...], _upto(MAX_ERASE_KEEP)]

    def validate(self) -> None:
        _check_path(self.path, "erase.path", allow_root=True)
        if len(self.keep) > MAX_ERASE_KEEP:
            raise ProtocolError(f"erase.keep: over {MAX_ERASE_KEEP} names")

    def decoded_items(self) -> int:
        return len(self.keep)


class PartialRef(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A partial a target listed (MappingState.partials), named by its path and version."""

    path: str
    hash: bytes


MAX_OBSOLETE_PARTIALS = 1024  # per Checkpoint; a sender with more sends more Checkpoints


class Checkpoint(Message, frozen=True, tag="checkpoint", omit_defaults=True):
    """Source -> target: everything up to `seq` has been sent (after a catch-up); commit, then ack.

    The Checkpoint that closes a manifest comparison names the target's partials whose version
    will never be sent (deleted, or replaced by another version, on the source): the target
    removes each one it still holds of that very version. An older target ignores the field.

    `again`: what follows, up to the next Checkpoint, is files the source read again and sends
    under the seqs they were journaled with (transfer/unreadable.py `retries`); a relay forwards
    those to children already past them (transfer/relay_retried.py), and nothing else below its
    children's watermarks. It does not advance the stream; an older peer ignores the field
    (defaults are not encoded: an unmarked Checkpoint goes as it did before the field).
    """

    seq: UInt63
    obsolete: tuple[PartialRef, ...] = ()
    again: bool = False

    def validate(self) -> None:
        if len(self.obsolete) > MAX_OBSOLETE_PARTIALS:
            raise ProtocolError(f"checkpoint.obsolete: over {MAX_OBSOLETE_PARTIALS} partials")
        for ref in self.obsolete:
            _check_path(ref.path, "checkpoint.obsolete.path")
            _check_hash(ref.hash, "checkpoint.obsolete.hash")


class SourceUnreadable(Message, frozen=True, tag="unreadable"):
    """Source (or relay) -> target: the source's paths there but unreadable now, in full.

    A relay keeps them (transfer/relay_unreadable.py) so that its own comparisons with its
    children keep those names as the source's do (transfer/compare.py Unreadable); any other
    target ignores them. Sent only to a peer that announced CAP_UNREADABLE.
    """

    files: Annotated[tuple[str, ...], _upto(MAX_UNREADABLE_PATHS)] = ()
    dirs: Annotated[tuple[str, ...], _upto(MAX_UNREADABLE_PATHS)] = ()  # "": the folder itself
    complete: bool = True  # False: the source had more than fit, so a relay erases nothing
    replace: bool = True  # these are all of them now; False: add these to what you keep

    def validate(self) -> None:
        if len(self.files) + len(self.dirs) > MAX_UNREADABLE_PATHS:
            raise ProtocolError(f"unreadable: over {MAX_UNREADABLE_PATHS} paths")
        size = 0
        for path in self.files:
            _check_path(path, "unreadable.files")
            size += len(path.encode("utf-8", "surrogateescape"))
        for path in self.dirs:
            _check_path(path, "unreadable.dirs", allow_root=True)
            size += len(path.encode("utf-8", "surrogateescape"))
        if size > MAX_UNREADABLE_BYTES:
            raise ProtocolError(f"unreadable: over {MAX_UNREADABLE_BYTES} bytes of paths")

    def decoded_items(self) -> int:
        return len(self.files) + len(self.dirs)


class NodeMark(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    node_id: str
    watermark: UInt63


class Ack(Message, frozen=True, tag="ack"):
    """Target -> source: all changes up to `watermark` are committed (durably, in safe mode).

    A relay also reports the watermarks of the targets below it, so the source keeps each
    change until every target has committed it.
    """

    mapping_id: UInt63
    watermark: UInt63
    subtree: Annotated[tuple[NodeMark, ...], _upto(MAX_SUBTREE_NODES)] = ()

    def validate(self) -> None:
        if len(self.subtree) > MAX_SUBTREE_NODES:
            raise ProtocolError("ack.subtree: too many nodes")

    def decoded_items(self) -> int:
        return len(self.subtree)
