"""Every message that crosses a process boundary: typed, tagged, versioned, validated.

Two links use them: the control link (agent <-> master) and the peer link (source agent ->
target agent). Both start with `Hello`. Tags and field names are never reused.

RESERVED tags: none yet.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

from relaysync.constants import (
    CHUNK_BYTES,
    MAX_CAPABILITIES,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    SMALL_FILE_BYTES,
)
from relaysync.errors import ProtocolError

HASH_BYTES = 16  # xxh3-128 digests
# Integers a target stores (manifest, watermarks) and the master's job log keeps go into signed
# 64-bit SQL columns; msgpack carries up to 2**64 - 1, so larger ones are refused on decode.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Collections on the wire carry at most this many elements, enforced while decoding
# (msgspec.Meta(max_length)), so one frame never becomes more objects than an honest sender
# makes; framing.py counts each element against its memory bound as well (`decoded_items`).
# Each bound is that of the code that builds the collection, which keeps to it:
MAX_ERASE_KEEP = 8192  # transfer/compare.py: a larger directory gets a Delete per name instead;
#                        8192 names of NAME_MAX bytes fit half of MAX_MESSAGE_BYTES
MAX_LISTING_ENTRIES = 20_000  # transfer/receiver.py: directory entries per digest reply
MAX_DIGEST_DIRS = 4096  # transfer/compare.py asks for 64 at a time; a reply has one listing each
MAX_PARTIALS = 1024  # transfer/receiver.py `list_partials`: resumable files a target lists
MAX_REPORT_RECORDS = 2000  # agent/master_link.py splits commit reports at this many records
MAX_SUBTREE_NODES = 65_536  # targets below a relay; a frame holds ~55,000 node ids anyway
MAX_ROUTE_NODES = 64  # nodes a stream comes through (source, relays)


def _upto(n: int) -> msgspec.Meta:
    return msgspec.Meta(max_length=n)


class ErrorCode(enum.IntEnum):
    """Why a peer refused something; mapped to and from errors in protocol/errors.py."""

    UNKNOWN = 0
    BAD_MESSAGE = 1
    UNSAFE_PATH = 2
    UNKNOWN_PEER = 3
    UNKNOWN_MAPPING = 4
    HASH_MISMATCH = 5
    IO_ERROR = 6
    VERSION = 7
    NOT_EXPECTED = 8
    DISK_FULL = 9
    BASE_MISMATCH = 10  # a delta's base is not what the target holds: send the whole file
    ROUTES_STALE = 12  # sender and receiver run different routing epochs: retry, not a failed hop
    RESUME_LOST = 11  # the partial a resume refers to is gone: send the whole file
    NOT_AUTHORIZED = 20  # purge listener: unknown site, bad HMAC, stale time or replayed nonce
    FOREIGN_URL = 21  # purge listener: the URL does not belong to the site
    PREFIX_NOT_EXPANDABLE = 22  # purge listener: a prefix no cache of the site can purge


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every wire message."""

    def validate(self) -> None:
        """Raise ProtocolError if the message is malformed; called right after decoding."""

    def decoded_items(self) -> int:
        """Elements of the collections it holds: framing.py counts each one's Python objects
        against its memory bound, beyond the frame's bytes (2-byte names cost 20 times that)."""
        return 0


def _check_path(path: str, field: str, *, allow_root: bool = False) -> None:
    """Shape-check a wire path (the filesystem check is transfer/paths.py)."""
    if path == "" and allow_root:
        return
    if not path or len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise ProtocolError(f"{field}: empty or over {MAX_PATH_BYTES} bytes")


def _check_hash(digest: bytes, field: str, *, optional: bool = False) -> None:
    if optional and not digest:
        return
    if len(digest) != HASH_BYTES:
        raise ProtocolError(f"{field}: hash must be {HASH_BYTES} bytes, got {len(digest)}")


def _check_non_negative(value: int, field: str) -> None:
    if not 0 <= value <= INT64_MAX:
        raise ProtocolError(f"{field}: must be in 0..2**63-1, got {value}")


def _check_int64(value: int, field: str) -> None:
    """A value the target stores in a signed 64-bit column (mtime_ns: negative before 1970)."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolError(f"{field}: outside the signed 64-bit range, got {value}")


def _check_changed_at(value: float, field: str) -> None:
    if not 0.0 <= value < 1e11:  # also refuses NaN and infinities
        raise ProtocolError(f"{field}: must be a unix time >= 0, got {value}")


# --- Handshake ---


class Hello(Message, frozen=True, tag="hello"):
    protocol_version: int
    node_id: str  # SHA-256 hex of the sender's certificate ("" for the master before join)
    name: str
    role: Literal["agent", "master"]
    # optional message kinds it takes (constants.CAPABILITIES)
    capabilities: Annotated[tuple[str, ...], _upto(MAX_CAPABILITIES)] = ()

    def validate(self) -> None:
        if len(self.name) > MAX_NAME_BYTES or len(self.node_id) > 64:
            raise ProtocolError("hello: name or node id too long")
        if len(self.capabilities) > MAX_CAPABILITIES or any(len(c) > 64 for c in self.capabilities):
            raise ProtocolError("hello: too many or too long capabilities")

    def decoded_items(self) -> int:
        return len(self.capabilities)


class Error(Message, frozen=True, tag="error"):
    """A refusal; the receiver of it maps `code` to an exception."""

    code: ErrorCode
    detail: str
    seq: int = 0  # the change it concerns, 0 for the link


class AuthChallenge(Message, frozen=True, tag="auth_challenge"):
    """Target -> source on a plain (TLS-off) link: prove you hold the link secret."""

    nonce: bytes

    def validate(self) -> None:
        if len(self.nonce) != 32:
            raise ProtocolError("auth_challenge: nonce must be 32 bytes")


class AuthResponse(Message, frozen=True, tag="auth_response"):
    """HMAC-SHA256(link secret, nonce | mapping id | source node | target node)."""

    mac: bytes

    def validate(self) -> None:
        if len(self.mac) != 32:
            raise ProtocolError("auth_response: mac must be 32 bytes")


class Ping(Message, frozen=True, tag="ping"):
    nonce: int = 0


class Pong(Message, frozen=True, tag="pong"):
    nonce: int = 0


# --- Control link: agent <-> master ---


class Register(Message, frozen=True, tag="register"):
    """Agent -> master, after Hello: who and where it is."""

    name: str
    region: str
    group: str
    peer_address: str  # host:port where its peer server listens


class BandwidthWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A time-of-day bandwidth limit of a link policy (transfer/bandwidth.py `BandwidthSchedule`)."""

    days: str = ""  # "mon-fri", "sat,sun", ...; "" = every day (the day the window starts on)
    start: str = "00:00"  # HH:MM in the policy's timezone
    end: str = "24:00"  # HH:MM; earlier than start = the window runs past midnight
    bandwidth_limit_mbit: float = 0.0  # 0 = unlimited


class LinkPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a source sends to one target: the policy of their network section or server pair."""

    tls: bool = True  # off only on links the operator marks trusted (then HMAC-authenticated)
    transfer: Literal["auto", "delta", "whole"] = "auto"  # delta or dump copy; auto picks per file
    zstd_level: int = 0  # 0 = no compression; chunks that do not shrink go plain anyway
    bandwidth_limit_mbit: float = 0.0  # 0 = unlimited; the limit outside every window
    windows: tuple[BandwidthWindow, ...] = ()  # the first window that holds now sets the limit
    timezone: str = ""  # IANA name the windows' times are in (zoneinfo); "" = UTC


class TargetSpec(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    path: str  # absolute folder on the target server
    policy: LinkPolicy | None = None  # None: the agent's own defaults
    link_secret: bytes = b""  # set when the policy turns TLS off: proves the source on a plain link


class RouteHop(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One edge of a mapping's distribution tree: `parent` streams the mapping's changes to `child`."""

    parent: str  # node id; the source node for a first hop
    child: str  # node id of a target (or relay) of the mapping
    level: str = (
        ""  # why the planner chose it: region-entry, group-entry, in-group, bypass-..., manual
    )


def nodes_below(routes: tuple[RouteHop, ...], node_id: str) -> frozenset[str]:
    """Every node below `node_id` in a mapping's distribution tree (none in a star).

    These are the only targets whose watermarks an `Ack` from `node_id` may carry.
    """
    below: set[str] = set()
    frontier = [node_id]
    while frontier:
        parent = frontier.pop()
        for hop in routes:
            if hop.parent == parent and hop.child not in below and hop.child != node_id:
                below.add(hop.child)
                frontier.append(hop.child)
    return frozenset(below)


class MappingSpec(msgspec.Struct, frozen=True, kw_only=True):
    mapping_id: int
    name: str
    source_node: str
    source_path: str  # absolute folder on the source server
    targets: tuple[TargetSpec, ...]
    include: tuple[str, ...] = ()  # regular expressions on the relative path; empty = all
    exclude: tuple[str, ...] = ()
    durability: Literal["safe", "fast"] = "safe"
    enabled: bool = True
    mode: Literal["realtime", "manual", "reserved"] = "realtime"  # when journaled changes are sent
    release: int = (
        0  # manual/reserved: bumped by the master each time the operator or schedule says send
    )
    delete_confirm: int = 0  # bumped when the operator confirms a mass delete the source held back
    keep_versions: int = (
        0  # synchronization and backup: previous versions kept on targets (0 = off)
    )
    keep_versions_on: tuple[str, ...] = ()  # node ids of the targets that keep them (empty = all)
    # The distribution tree (routing/planner.py): every target's parent. Empty = a star from the
    # source. Changes to it need no restart: links are added and dropped in place.
    routes: tuple[RouteHop, ...] = ()
    route_epoch: int = 0  # bumped by the master at each re-plan
    # N:M jobs: the member mappings of job `job_id` write one target tree; "newest-mtime" resolves
    # two sources writing one path (transfer/conflicts.py). "" = the source is the truth.
    conflict: str = ""
    job_id: int = 0
    # Delta or dump copy forced for every link of this mapping, over the links' policies; "" = per policy.
    transfer_override: Literal["", "auto", "delta", "whole"] = ""


class PeerInfo(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    name: str
    address: str  # host:port of its peer server


class Assignment(Message, frozen=True, tag="assignment"):
    """Master -> agent: every mapping it takes part in, and its peers. Versioned by epoch."""

    epoch: int
    mappings: tuple[MappingSpec, ...]
    peers: tuple[PeerInfo, ...]

    def decoded_items(self) -> int:
        return (
            len(self.mappings)
            + len(self.peers)
            + sum(
                len(m.targets) + len(m.routes) + len(m.include) + len(m.exclude)
                for m in self.mappings
            )
        )


class ReleaseReport(Message, frozen=True, tag="release_report"):
    """Source agent -> master: release `release` of a manual/reserved mapping covers seqs up to `upto_seq`."""

    mapping_id: int
    release: int
    upto_seq: int


class MassDeleteHeld(Message, frozen=True, tag="mass_delete_held"):
    """Source agent -> master: a scan would delete most of a folder (an unmounted disk?): held."""

    mapping_id: int
    deletes: int  # entries the held changes would remove on every target
    entries: int  # entries the source knew before
    root_missing: bool


class AssignmentAck(Message, frozen=True, tag="assignment_ack"):
    epoch: int


class CommitRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One change as applied (or refused) on one target."""

    seq: int  # journal sequence on the source; 0 for catch-up work outside the journal
    op: str
    path: str
    size: int = 0
    wire_bytes: int = 0
    ok: bool = True
    error: str = ""
    duration_ms: float = 0.0
    committed_at: float = 0.0  # unix time on the target
    new_path: str = ""  # a rename's new path: the purger refreshes it and what moved under it
    # N:M jobs (transfer/conflicts.py): why two sources' versions met here ("" = they did not),
    # and the other source's node id; "newer": this record's version won, otherwise it lost.
    conflict: str = ""
    conflict_with: str = ""
    changed_at: float = (
        0.0  # the op's changed_at (source clock); committed_at - changed_at = latency
    )


class CommitReport(Message, frozen=True, tag="commit_report"):
    """Target -> master, at once after commits: the watermark and what was applied."""

    mapping_id: int
    source_node: str
    target_node: str
    watermark: int  # every seq <= watermark is committed on the target
    records: Annotated[tuple[CommitRecord, ...], _upto(MAX_REPORT_RECORDS)]
    # names of the nodes the changes came through, source first
    route: Annotated[tuple[str, ...], _upto(MAX_ROUTE_NODES)] = ()

    def decoded_items(self) -> int:
        return len(self.records) + len(self.route)


# --- Peer link: source agent -> target agent ---


class OpenMapping(Message, frozen=True, tag="open"):
    """Source -> target: start streaming changes of this mapping."""

    mapping_id: int
    journal_id: str  # identifies the source's journal; a new one means old watermarks are void
    # names of the nodes the stream came through, source first
    route: Annotated[tuple[str, ...], _upto(MAX_ROUTE_NODES)] = ()
    route_epoch: int = 0  # the sender's routing table (MappingSpec.route_epoch)

    def validate(self) -> None:
        if len(self.route) > MAX_ROUTE_NODES or any(len(n) > MAX_NAME_BYTES for n in self.route):
            raise ProtocolError(f"open.route: over {MAX_ROUTE_NODES} hops or a name too long")

    def decoded_items(self) -> int:
        return len(self.route)


class Partial(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A large file the target received in part before a link or process died."""

    path: str
    hash: bytes  # the content hash the source announced for it
    size: int  # bytes held, a whole number of chunks


class MappingState(Message, frozen=True, tag="state"):
    """Target -> source: where it stands."""

    mapping_id: int
    watermark: int  # highest seq committed with no gap, for this journal_id
    root_hash: bytes  # manifest root hash of the target tree
    # interrupted large files it can resume
    partials: Annotated[tuple[Partial, ...], _upto(MAX_PARTIALS)] = ()

    def decoded_items(self) -> int:
        return len(self.partials)


class DirEntry(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    name: str
    kind: Literal["f", "d", "l"]
    hash: bytes  # file content, directory (recursive), or link target hash
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0


class DirListing(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # relative, "" for the root
    entries: Annotated[tuple[DirEntry, ...], _upto(MAX_LISTING_ENTRIES)]
    exists: bool = True
    hash: bytes = b""  # the directory's own recursive hash (set for hashes_only requests)
    more: bool = False  # entries were cut to keep the reply small: ask again with after=<last name>


class DigestRequest(Message, frozen=True, tag="digest_req"):
    """Source -> target: send me your listings of these directories (top-down compare)."""

    mapping_id: int
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
    mapping_id: int
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

    seq: int
    path: str
    size: int
    mode: int
    mtime_ns: int
    base_hash: bytes = b""  # hash of the version it replaces ("" if none known)
    expected_hash: bytes = (
        b""  # hash the source expects the content to have; names a resumable partial
    )
    offset: int = 0  # resume: the target already holds the first `offset` bytes in its partial
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

    seq: int
    path: str
    size: int  # of the new file
    mode: int
    mtime_ns: int
    base_hash: bytes
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )
    # The delta comes in this many parts, each a complete librsync delta of a consecutive range
    # of the new file (computed at once on several cores); each part's chunks start at offset 0.
    parts: int = 1
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
    seq: int
    offset: int
    data: bytes
    codec: int = 0  # protocol codec id: 0 = plain

    def validate(self) -> None:
        _check_non_negative(self.offset, "chunk.offset")
        if len(self.data) > CHUNK_BYTES + 1024:
            raise ProtocolError(f"chunk: {len(self.data)} bytes is over the chunk limit")


class FileEnd(Message, frozen=True, tag="file_end"):
    """The strong hash of everything sent; the target commits only if it matches."""

    seq: int
    hash: bytes

    def validate(self) -> None:
        _check_hash(self.hash, "file_end.hash")


class SmallFile(Message, frozen=True, tag="small_file"):
    """Source -> target: a whole file of at most SMALL_FILE_BYTES in one frame, with its strong hash.

    Stands for FileStart, one FileChunk and FileEnd: for 10,000 files of 4 KiB the three
    messages per file were a fifth of the receiver's Python time. Never a delta or a resume."""

    seq: int
    path: str
    size: int
    mode: int
    mtime_ns: int
    data: bytes
    hash: bytes  # of the file's content (after decoding `data`); the target commits only if it matches
    codec: int = 0  # protocol codec id of `data`: 0 = plain
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


class FileAbort(Message, frozen=True, tag="file_abort"):
    """The source gave up on this file (it changed while read); the target discards it."""

    seq: int
    reason: str


class Delete(Message, frozen=True, tag="delete"):
    """Delete a file, link or whole tree."""

    seq: int
    path: str
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "delete.changed_at")
        _check_path(self.path, "delete.path")


class MakeDir(Message, frozen=True, tag="mkdir"):
    seq: int
    path: str
    mode: int = 0o755
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "mkdir.changed_at")
        _check_path(self.path, "mkdir.path")


class Symlink(Message, frozen=True, tag="symlink"):
    seq: int
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
    seq: int
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
    seq: int
    path: str
    mode: int
    mtime_ns: int
    changed_at: float = (
        0.0  # unix time the source journaled the change; 0 = unknown (catch-up work)
    )

    def validate(self) -> None:
        _check_changed_at(self.changed_at, "attr.changed_at")
        _check_path(self.path, "attr.path")
        _check_int64(self.mtime_ns, "attr.mtime_ns")


class Erase(Message, frozen=True, tag="erase"):
    """Remove every child of directory `path` whose name is not in `keep`."""

    seq: int
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


class Checkpoint(Message, frozen=True, tag="checkpoint"):
    """Source -> target: everything up to `seq` has been sent (after a catch-up); commit, then ack.

    The Checkpoint that closes a manifest comparison names the target's partials whose version
    will never be sent (deleted, or replaced by another version, on the source): the target
    removes each one it still holds of that very version. An older target ignores the field.
    """

    seq: int
    obsolete: tuple[PartialRef, ...] = ()

    def validate(self) -> None:
        if len(self.obsolete) > MAX_OBSOLETE_PARTIALS:
            raise ProtocolError(f"checkpoint.obsolete: over {MAX_OBSOLETE_PARTIALS} partials")
        for ref in self.obsolete:
            _check_path(ref.path, "checkpoint.obsolete.path")
            _check_hash(ref.hash, "checkpoint.obsolete.hash")


class NodeMark(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    node_id: str
    watermark: int


class Ack(Message, frozen=True, tag="ack"):
    """Target -> source: all changes up to `watermark` are committed (durably, in safe mode).

    A relay also reports the watermarks of the targets below it, so the source keeps each
    change until every target has committed it.
    """

    mapping_id: int
    watermark: int
    subtree: Annotated[tuple[NodeMark, ...], _upto(MAX_SUBTREE_NODES)] = ()

    def validate(self) -> None:
        if len(self.subtree) > MAX_SUBTREE_NODES:
            raise ProtocolError("ack.subtree: too many nodes")

    def decoded_items(self) -> int:
        return len(self.subtree)


class HopFailed(Message, frozen=True, tag="hop_failed"):
    """Agent -> master: this agent could not stream mapping `mapping_id` to `child` (connect or
    transfer error, or the child refused it). The master re-plans around the hop."""

    mapping_id: int
    child: str  # node id
    error: str
    attempts: int = 1  # consecutive failures so far


# --- Monitoring ---

MAX_METRIC_SAMPLES = 4096  # one report per agent tick; thousands of mappings is already extreme
MAX_METRIC_NAME = 64
MAX_METRIC_LABELS = 8  # e.g. the disk path or the mapping of one figure


class MetricSample(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One figure: a gauge value, with labels such as the disk path or the mapping."""

    name: str  # e.g. cpu_percent, disk_used_percent, journal_backlog
    value: float
    labels: Annotated[tuple[tuple[str, str], ...], _upto(MAX_METRIC_LABELS)] = ()


class MetricsReport(Message, frozen=True, tag="metrics_report"):
    """Agent -> master, every metrics_interval_s: the agent's server figures."""

    at: float  # unix time on the agent when collected
    samples: Annotated[tuple[MetricSample, ...], _upto(MAX_METRIC_SAMPLES)]

    def decoded_items(self) -> int:
        return len(self.samples) + sum(len(s.labels) for s in self.samples)

    def validate(self) -> None:
        if len(self.samples) > MAX_METRIC_SAMPLES:
            raise ProtocolError(f"metrics_report: over {MAX_METRIC_SAMPLES} samples")
        for s in self.samples:
            if not s.name or len(s.name) > MAX_METRIC_NAME or not s.name.replace("_", "").isalnum():
                raise ProtocolError(f"metrics_report: bad metric name {s.name[:80]!r}")
            if s.value != s.value or s.value in (float("inf"), float("-inf")):
                raise ProtocolError(f"metrics_report: {s.name} is not a finite number")
            if len(s.labels) > MAX_METRIC_LABELS or any(
                len(k) > MAX_METRIC_NAME or len(v) > MAX_PATH_BYTES for k, v in s.labels
            ):
                raise ProtocolError(f"metrics_report: {s.name} has too many or too long labels")


# --- Purge listener ---

MAX_NOTICE_URL_BYTES = 8192  # caches refuse longer request lines anyway
PURGE_NOTICE_CONTEXT = b"relaysync-purge-notice-v1"


class PurgeNotice(Message, frozen=True, tag="purge_notice"):
    """An origin outside the fleet -> the master's purge listener: this URL or path changed.

    `hmac` is the hex HMAC-SHA256, keyed with the site's secret, of canonical().
    """

    site: str
    url_or_path: str
    kind: Literal["url", "path", "prefix"]  # a full URL; a path under the site root; a directory
    nonce: str  # unique per notice; a repeat within the time window is refused
    time: float  # unix time when signed
    hmac: str

    def canonical(self) -> bytes:
        """The bytes the HMAC covers: every field but the HMAC, unambiguously joined."""
        fields = (self.site, self.kind, self.url_or_path, self.nonce, repr(float(self.time)))
        return PURGE_NOTICE_CONTEXT + b"".join(
            b"\n" + str(len(f.encode())).encode() + b":" + f.encode() for f in fields
        )

    def validate(self) -> None:
        if not self.site or len(self.site) > MAX_NAME_BYTES:
            raise ProtocolError("purge_notice: site name empty or too long")
        if (
            not self.url_or_path
            or len(self.url_or_path.encode("utf-8", "surrogateescape")) > MAX_NOTICE_URL_BYTES
        ):
            raise ProtocolError(
                f"purge_notice: url_or_path empty or over {MAX_NOTICE_URL_BYTES} bytes"
            )
        if not 8 <= len(self.nonce) <= 64 or len(self.hmac) != 64:
            raise ProtocolError(
                "purge_notice: nonce must be 8-64 characters and hmac 64 hex digits"
            )


class PurgeAccepted(Message, frozen=True, tag="purge_accepted"):
    """Listener -> origin: the notice was checked and `items` purges are queued."""

    nonce: str
    items: int


AnyMessage = (
    Hello
    | Error
    | AuthChallenge
    | AuthResponse
    | Ping
    | Pong
    | Register
    | Assignment
    | AssignmentAck
    | ReleaseReport
    | MassDeleteHeld
    | CommitReport
    | OpenMapping
    | MappingState
    | DigestRequest
    | DigestReply
    | FileStart
    | DeltaStart
    | FileChunk
    | FileEnd
    | SmallFile
    | FileAbort
    | Delete
    | MakeDir
    | Symlink
    | Rename
    | SetAttr
    | Erase
    | Checkpoint
    | Ack
    | HopFailed
    | PurgeNotice
    | PurgeAccepted
    | MetricsReport
)


# Ops that change a target tree, in the order a source streams them.
ChangeOp = (
    FileStart | DeltaStart | SmallFile | Delete | MakeDir | Symlink | Rename | SetAttr | Erase
)

ENCODER = msgspec.msgpack.Encoder()
DECODER: msgspec.msgpack.Decoder[AnyMessage] = msgspec.msgpack.Decoder(AnyMessage)  # type: ignore[arg-type]
