"""Every message that crosses a process boundary: typed, tagged, versioned, validated.

Two links use them: the control link (agent <-> master) and the peer link (source agent ->
target agent). Both start with `Hello`. Tags and field names are never reused.

This module is the one place to import wire types from. It holds the handshake messages, which
every link starts with, and the tagged unions; the other messages are grouped by plane in
_control_messages.py, _link_messages.py and _purge_messages.py, on the base in _message_base.py.

RESERVED tags: none yet.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from relaysync.constants import MAX_CAPABILITIES, MAX_NAME_BYTES
from relaysync.errors import ProtocolError
from relaysync.protocol._control_messages import (
    LOST_OP,
    MAX_JOURNAL_HEADS,
    MAX_METRIC_LABELS,
    MAX_METRIC_NAME,
    MAX_METRIC_SAMPLES,
    MAX_SOURCE_ERROR,
    MAX_SOURCE_FAILURES,
    Assignment,
    AssignmentAck,
    BandwidthWindow,
    CommitRecord,
    CommitReport,
    HopFailed,
    JournalHead,
    LinkPolicy,
    MappingSpec,
    MassDeleteEnded,
    MassDeleteHeld,
    MetricSample,
    MetricsReport,
    PeerInfo,
    Register,
    ReleaseReport,
    ReportsTaken,
    RouteHop,
    SourceFailure,
    TargetSpec,
    failure_reason,
    nodes_below,
)
from relaysync.protocol._link_messages import (
    MAX_DELTA_PARTS,
    MAX_OBSOLETE_PARTIALS,
    Ack,
    Checkpoint,
    Delete,
    DeltaStart,
    DigestReply,
    DigestRequest,
    DirEntry,
    DirListing,
    Erase,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    MappingState,
    NodeMark,
    OpenMapping,
    Partial,
    PartialRef,
    Rename,
    SetAttr,
    SmallFile,
    SourceUnreadable,
    Symlink,
)
from relaysync.protocol._message_base import (
    HASH_BYTES,
    INT64_MAX,
    INT64_MIN,
    MAX_DIGEST_DIRS,
    MAX_ERASE_KEEP,
    MAX_LISTING_ENTRIES,
    MAX_PARTIALS,
    MAX_REMOVED_BYTES,
    MAX_REMOVED_PATHS,
    MAX_REPORT_RECORDS,
    MAX_ROUTE_NODES,
    MAX_SUBTREE_NODES,
    MAX_UNREADABLE_BYTES,
    MAX_UNREADABLE_PATHS,
    ErrorCode,
    Int64,
    Message,
    UInt63,
    _upto,
)
from relaysync.protocol._purge_messages import (
    MAX_NOTICE_URL_BYTES,
    PURGE_NOTICE_CONTEXT,
    PurgeAccepted,
    PurgeNotice,
)

__all__ = [
    "Ack",
    "AnyMessage",
    "Assignment",
    "AssignmentAck",
    "AuthChallenge",
    "AuthResponse",
    "BandwidthWindow",
    "ChangeOp",
    "Checkpoint",
    "CommitRecord",
    "CommitReport",
    "DECODER",
    "Delete",
    "DeltaStart",
    "DigestReply",
    "DigestRequest",
    "DirEntry",
    "DirListing",
    "ENCODER",
    "Erase",
    "Error",
    "ErrorCode",
    "FileAbort",
    "FileChunk",
    "FileEnd",
    "FileStart",
    "HASH_BYTES",
    "Hello",
    "HopFailed",
    "INT64_MAX",
    "INT64_MIN",
    "Int64",
    "JournalHead",
    "LOST_OP",
    "LinkPolicy",
    "MAX_DELTA_PARTS",
    "MAX_DIGEST_DIRS",
    "MAX_ERASE_KEEP",
    "MAX_JOURNAL_HEADS",
    "MAX_LISTING_ENTRIES",
    "MAX_METRIC_LABELS",
    "MAX_METRIC_NAME",
    "MAX_METRIC_SAMPLES",
    "MAX_NOTICE_URL_BYTES",
    "MAX_OBSOLETE_PARTIALS",
    "MAX_PARTIALS",
    "MAX_REMOVED_BYTES",
    "MAX_REMOVED_PATHS",
    "MAX_REPORT_RECORDS",
    "MAX_ROUTE_NODES",
    "MAX_SOURCE_ERROR",
    "MAX_SOURCE_FAILURES",
    "MAX_SUBTREE_NODES",
    "MAX_UNREADABLE_BYTES",
    "MAX_UNREADABLE_PATHS",
    "MakeDir",
    "MappingSpec",
    "MappingState",
    "MassDeleteEnded",
    "MassDeleteHeld",
    "Message",
    "MetricSample",
    "MetricsReport",
    "NodeMark",
    "OpenMapping",
    "PURGE_NOTICE_CONTEXT",
    "Partial",
    "PartialRef",
    "PeerInfo",
    "Ping",
    "Pong",
    "PurgeAccepted",
    "PurgeNotice",
    "Register",
    "ReleaseReport",
    "ReportsTaken",
    "Rename",
    "RouteHop",
    "SetAttr",
    "SmallFile",
    "SourceFailure",
    "failure_reason",
    "SourceUnreadable",
    "Symlink",
    "TargetSpec",
    "UInt63",
    "nodes_below",
]


# --- Handshake ---


class Hello(Message, frozen=True, tag="hello"):
    protocol_version: UInt63
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
    seq: UInt63 = 0  # the change it concerns, 0 for the link


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
    nonce: Int64 = 0


class Pong(Message, frozen=True, tag="pong"):
    nonce: Int64 = 0


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
    | MassDeleteEnded
    | CommitReport
    | ReportsTaken
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
    | SourceUnreadable
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
