"""The base of wire messages: the Message class, error codes, collection bounds, field checks."""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import msgspec

from relaysync.constants import MAX_PATH_BYTES
from relaysync.errors import ProtocolError

HASH_BYTES = 16  # xxh3-128 digests
MAX_NODE_ID = 64  # a node id is the SHA-256 hex of its certificate
# Integers a target stores (manifest, watermarks) and the master's job log keeps go into signed
# 64-bit SQL columns; msgpack carries up to 2**64 - 1, so larger ones are refused on decode.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Every integer field on the wire is one of these, checked while decoding (msgspec.Meta) like
# the collection bounds below: a value out of range is an undecodable frame (ProtocolError) and
# never reaches a handler, a SQL BIGINT column, a watermark or a journal. Seqs, watermarks,
# sizes, offsets, ids, epochs, counts and modes are never negative; a time in ns may be (before
# 1970), and so may an echoed nonce or a zstd level. The bound changes no valid message's bytes.
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
UInt63 = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
# Floats likewise: msgpack carries NaN and the infinities, which no sender makes, which compare
# false with everything (a NaN time is never old enough to prune; `abs(now - nan) > skew` never
# holds) and which poison every sum and percentile they enter. Every float field of the control
# and purge messages is one of these (the peer link's `changed_at` is checked in validate()).
MAX_UNIX_TIME_S = 1e11  # the year 5138: a clock past it is wrong, not early
MAX_DURATION_MS = 1e12  # 31 years: what one file's transfer may take, summed 2,000 to a report
UnixTime = Annotated[float, msgspec.Meta(ge=0.0, lt=MAX_UNIX_TIME_S)]  # seconds; 0 = unknown
DurationMs = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_DURATION_MS)]
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0, le=sys.float_info.max)]

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
MAX_REMOVED_PATHS = 10_000  # transfer/removal.py: files under a directory an op removed, per record
MAX_REMOVED_BYTES = 1024 * 1024  # ...and their bytes, per record and per report (master_link.py)
MAX_SUBTREE_NODES = 65_536  # targets below a relay; a frame holds ~55,000 node ids anyway
MAX_ROUTE_NODES = 64  # nodes a stream comes through (source, relays)
MAX_UNREADABLE_PATHS = 4096  # transfer/relay_unreadable.py: a source with more says it is cut
MAX_UNREADABLE_BYTES = 1024 * 1024  # ...and their bytes, so the message fits MAX_MESSAGE_BYTES


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
    CERT_REFUSED = 13  # the sender's certificate is expired or not yet valid: the detail says when
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
    if not 0.0 <= value < MAX_UNIX_TIME_S:  # also refuses NaN and infinities
        raise ProtocolError(f"{field}: must be a unix time >= 0, got {value}")
