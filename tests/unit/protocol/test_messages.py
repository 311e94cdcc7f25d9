"""Wire messages: every integer field is bounded on decode, and valid messages keep their bytes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from relaysync.errors import ProtocolError
from relaysync.protocol.framing import decode_payload
from relaysync.protocol.messages import (
    ENCODER,
    INT64_MAX,
    INT64_MIN,
    Ack,
    AnyMessage,
    Assignment,
    AssignmentAck,
    AuthChallenge,
    AuthResponse,
    BandwidthWindow,
    Checkpoint,
    CommitRecord,
    CommitReport,
    Delete,
    DeltaStart,
    DigestReply,
    DigestRequest,
    DirEntry,
    DirListing,
    Erase,
    Error,
    ErrorCode,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    Hello,
    HopFailed,
    LinkPolicy,
    MakeDir,
    MappingSpec,
    MappingState,
    MassDeleteEnded,
    MassDeleteHeld,
    MetricSample,
    MetricsReport,
    NodeMark,
    OpenMapping,
    Partial,
    PartialRef,
    PeerInfo,
    Ping,
    Pong,
    PurgeAccepted,
    PurgeNotice,
    Register,
    ReleaseReport,
    Rename,
    ReportsTaken,
    RouteHop,
    SetAttr,
    SmallFile,
    SourceUnreadable,
    Symlink,
    TargetSpec,
)

H = b"h" * 16
# Integers that are signed on the wire (every other one is a count, id, seq, size or mode: >= 0).
SIGNED = {"mtime_ns", "nonce", "zstd_level"}

# One valid message of every type, every collection non-empty and every optional struct set, so
# that every integer field on the wire appears in one of them.
SAMPLES: list[AnyMessage] = [
    Hello(protocol_version=1, node_id="n" * 64, name="web-a", role="agent", capabilities=("x",)),
    Error(code=ErrorCode.HASH_MISMATCH, detail="d", seq=INT64_MAX),
    AuthChallenge(nonce=b"n" * 32),
    AuthResponse(mac=b"m" * 32),
    Ping(nonce=INT64_MIN),
    Pong(nonce=INT64_MAX),
    Register(name="web-a", region="r", group="g", peer_address="h:1"),
    Assignment(
        epoch=7,
        mappings=(
            MappingSpec(
                mapping_id=3,
                name="m",
                source_node="s",
                source_path="/s",
                targets=(
                    TargetSpec(
                        node_id="t",
                        path="/t",
                        policy=LinkPolicy(
                            zstd_level=3,
                            windows=(BandwidthWindow(days="mon", bandwidth_limit_mbit=5.0),),
                        ),
                    ),
                ),
                release=2,
                delete_confirm=1,
                keep_versions=4,
                routes=(RouteHop(parent="s", child="t"),),
                route_epoch=9,
                job_id=5,
            ),
        ),
        peers=(PeerInfo(node_id="t", name="t", address="h:2"),),
    ),
    AssignmentAck(epoch=7),
    ReleaseReport(mapping_id=3, release=2, upto_seq=INT64_MAX),
    MassDeleteHeld(mapping_id=3, deletes=10, entries=11, root_missing=False),
    CommitReport(
        mapping_id=3,
        source_node="s",
        target_node="t",
        watermark=INT64_MAX,
        records=(CommitRecord(seq=INT64_MAX, op="file", path="a", size=INT64_MAX, wire_bytes=12),),
        route=("s",),
    ),
    OpenMapping(mapping_id=3, journal_id="j", route=("s",), route_epoch=9),
    MappingState(
        mapping_id=3, watermark=8, root_hash=H, partials=(Partial(path="p", hash=H, size=1),)
    ),
    DigestRequest(mapping_id=3, dirs=("",)),
    DigestReply(
        mapping_id=3,
        listings=(
            DirListing(
                path="",
                entries=(DirEntry(name="a", kind="f", hash=H, size=1, mtime_ns=-1, mode=0o644),),
            ),
        ),
    ),
    FileStart(seq=1, path="a", size=10, mode=0o644, mtime_ns=INT64_MIN, expected_hash=H, offset=2),
    DeltaStart(seq=1, path="a", size=10, mode=0o644, mtime_ns=INT64_MAX, base_hash=H, parts=2),
    FileChunk(seq=1, offset=0, data=b"x", codec=1),
    FileEnd(seq=1, hash=H),
    SmallFile(seq=1, path="a", size=1, mode=0o644, mtime_ns=0, data=b"x", hash=H, codec=0),
    FileAbort(seq=1, reason="r"),
    Delete(seq=INT64_MAX, path="a"),
    MakeDir(seq=2, path="d", mode=0o755),
    Symlink(seq=3, path="l", target="a"),
    Rename(seq=4, path="a", new_path="b"),
    SetAttr(seq=5, path="a", mode=0o600, mtime_ns=-5),
    Erase(seq=6, path="", keep=("a",)),
    Checkpoint(seq=INT64_MAX, obsolete=(PartialRef(path="p", hash=H),)),
    Ack(mapping_id=3, watermark=INT64_MAX, subtree=(NodeMark(node_id="t", watermark=4),)),
    HopFailed(mapping_id=3, child="t", error="e", attempts=2),
    PurgeNotice(site="s", url_or_path="/a", kind="path", nonce="n" * 8, time=1.0, hmac="0" * 64),
    PurgeAccepted(nonce="n" * 8, items=3),
    MetricsReport(at=1.0, samples=(MetricSample(name="cpu", value=1.0, labels=(("k", "v"),)),)),
    ReportsTaken(upto=INT64_MAX),  # new since the pinned ones (CAP_REPORT_ACK)
    SourceUnreadable(files=("a",), dirs=("", "d"), complete=False, replace=False),  # CAP_UNREADABLE
    Checkpoint(seq=3, again=True),  # files sent again follow (an older peer ignores the field)
    MassDeleteHeld(mapping_id=3, deletes=10, entries=11, root_missing=False, resent=True),
    MassDeleteEnded(mapping_id=3, reason="paths back"),
    MassDeleteHeld(mapping_id=3, deletes=10, entries=11, root_missing=False, hold=INT64_MAX),
    MassDeleteEnded(mapping_id=3, reason="paths back", hold=INT64_MAX),
    ReleaseReport(
        mapping_id=3, release=2, upto_seq=4, journal_id="0" * 32
    ),  # an older master ignores it
]
PINNED = len(SAMPLES) - 8  # the samples the hash below covers
# sha256 of the samples' encodings, joined, as the release before the integer bounds sent them,
# except CommitReport: its records gained three optional fields since (`kind`, `removed`,
# `removed_truncated`, which older masters ignore), and Assignment: its MappingSpec gained two
# (`symlinks`, `mode_mask`, which older agents ignore), and HopFailed gained `address` (which
# older masters ignore); every other sample's bytes are unchanged.
NAN, INF = float("nan"), float("inf")
SAMPLES_SHA256 = "469e65c3278b7a9cb4a902c1e48af558a6e0a7f1bbb20e684c8896046120915f"
# One of them in full: a map of type, seq (uint64 0x7fff...), path and changed_at (float64 0).
DELETE_HEX = (
    "84a474797065a664656c657465a3736571cf7fffffffffffffffa470617468a161"
    "aa6368616e6765645f6174cb0000000000000000"
)


def _int_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every integer (not bool) in a message's msgpack form."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _int_paths(item, (*path, key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _int_paths(item, (*path, i))
    elif isinstance(value, int) and not isinstance(value, bool):
        yield path


def _with(builtins: Any, path: tuple[Any, ...], value: float) -> bytes:
    copy = msgspec.msgpack.decode(msgspec.msgpack.encode(builtins))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return msgspec.msgpack.encode(copy)


def _field_name(message: AnyMessage, path: tuple[Any, ...]) -> str:
    """The field an integer path ends at (array-like structs name their fields by position)."""
    info: Any = mi.type_info(type(message))
    name = ""
    for key in path:
        if isinstance(info, mi.UnionType):  # an optional struct
            info = next(t for t in info.types if not isinstance(t, mi.NoneType))
        if isinstance(info, mi.VarTupleType):  # an element of a collection
            info = info.item_type
        elif isinstance(info, mi.TupleType):  # a metric label (key, value): strings only
            info = info.item_types[key]
        else:
            fields = info.fields
            field = fields[key] if info.array_like else next(f for f in fields if f.name == key)
            info, name = field.type, field.name
    return name


def _cases() -> Iterator[Any]:
    for message in SAMPLES:
        builtins = msgspec.msgpack.decode(ENCODER.encode(message))
        for path in _int_paths(builtins):
            if path == ("code",):  # ErrorCode: an enum, checked by value
                continue
            field = _field_name(message, path)
            # a validate() check names the field; a decode error where it is (`$.subtree[0][1]`)
            where = "$" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)
            label = f"{type(message).__name__}.{'.'.join(map(str, path))}"
            bad = [2**63, 2**64 - 1] + ([] if field in SIGNED else [-1])
            for value in bad:
                yield pytest.param(
                    _with(builtins, path, value),
                    f"{re.escape(field)}|{re.escape(where)}",
                    id=f"{label}={value}",
                )


def test_valid_messages_keep_their_bytes_and_decode() -> None:
    encoded = [ENCODER.encode(m) for m in SAMPLES]
    assert hashlib.sha256(b"".join(encoded[:PINNED])).hexdigest() == SAMPLES_SHA256
    assert ENCODER.encode(Delete(seq=INT64_MAX, path="a")).hex() == DELETE_HEX
    assert [decode_payload(e) for e in encoded] == SAMPLES
    assert len({type(m) for m in SAMPLES}) == len(AnyMessage.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("payload", "names_the_field"), list(_cases()))
def test_an_integer_no_sender_makes_is_a_malformed_message(
    payload: bytes, names_the_field: str
) -> None:
    """Over 2**63 - 1 (msgpack carries up to 2**64 - 1), or negative for a count, id or seq:
    the value never reaches a handler, a SQL BIGINT column or a target's watermark."""
    with pytest.raises(ProtocolError, match=names_the_field):
        decode_payload(payload)


def _unbounded(info: Any, where: str) -> Iterator[str]:
    if isinstance(info, mi.IntType):
        low = INT64_MIN if where.rsplit(".", 1)[-1] in SIGNED else 0
        if info.ge is None or info.le is None or info.ge < low or info.le > INT64_MAX:
            yield where
    elif isinstance(info, mi.StructType):
        for f in info.fields:
            yield from _unbounded(f.type, f"{info.cls.__name__}.{f.name}")
    elif isinstance(info, (mi.VarTupleType, mi.ListType)):
        yield from _unbounded(info.item_type, where)
    elif isinstance(info, mi.TupleType):
        for item in info.item_types:
            yield from _unbounded(item, where)
    elif isinstance(info, mi.UnionType):
        for t in info.types:
            yield from _unbounded(t, where)


def test_every_integer_field_on_the_wire_declares_its_bounds() -> None:
    """A new integer field is bounded like the others: 0..2**63-1, or signed 64-bit for these."""
    assert sorted(set(_unbounded(mi.type_info(AnyMessage), "AnyMessage"))) == []


def _report(**record: Any) -> bytes:
    fields = {"seq": 1, "op": "write", "path": "a", **record}
    return ENCODER.encode(
        CommitReport(
            mapping_id=1,
            source_node="s" * 64,
            target_node="t" * 64,
            watermark=1,
            records=(CommitRecord(**fields),),
        )
    )


@pytest.mark.parametrize("op", ["write", "delete", "mkdir", "symlink", "rename", "attr", "erase"])
def test_the_receivers_op_names_decode(op: str) -> None:
    report = decode_payload(_report(op=op))
    assert isinstance(report, CommitReport) and report.records[0].op == op


@pytest.mark.parametrize("op", ["", "x" * 33, "Write", "write\n", "wr ite", "é"])
def test_an_op_name_no_receiver_makes_is_a_malformed_message(op: str) -> None:
    """changes.op is VARCHAR(32): a longer op failed every job log flush on PostgreSQL."""
    with pytest.raises(ProtocolError, match=r"\$\.records\[0\]\.op"):
        decode_payload(_report(op=op))


def _unbounded_floats(info: Any, where: str) -> Iterator[str]:
    if isinstance(info, mi.FloatType):
        if info.ge is None and info.gt is None or info.le is None and info.lt is None:
            yield where
    elif isinstance(info, mi.StructType):
        for f in info.fields:
            yield from _unbounded_floats(f.type, f"{info.cls.__name__}.{f.name}")
    elif isinstance(info, (mi.VarTupleType, mi.ListType)):
        yield from _unbounded_floats(info.item_type, where)
    elif isinstance(info, mi.UnionType):
        for t in info.types:
            yield from _unbounded_floats(t, where)


CHECKED_IN_VALIDATE = {"changed_at"}  # the peer link's ops: `_check_changed_at`


def test_every_float_field_on_the_wire_declares_its_bounds() -> None:
    """NaN and the infinities, which msgpack carries, are refused on decode: a NaN time is never
    old enough to prune and a NaN latency or duration poisons every statistic it is summed in."""
    found = set(_unbounded_floats(mi.type_info(AnyMessage), "AnyMessage"))
    assert sorted(f for f in found if f.rsplit(".", 1)[-1] not in CHECKED_IN_VALIDATE) == []


FLOAT_CASES = [
    (CommitReport, ("records", 0, "duration_ms"), [-1.0, NAN, INF]),
    (CommitReport, ("records", 0, "committed_at"), [-1.0, NAN, INF, 1e11]),
    (CommitReport, ("records", 0, "changed_at"), [-1.0, NAN, INF, 1e11]),
    (MetricsReport, ("at",), [-1.0, NAN, INF]),
    (MetricsReport, ("samples", 0, 1), [NAN, INF, -INF]),
    (PurgeNotice, ("time",), [-1.0, NAN, INF]),
    (Assignment, ("mappings", 0, "targets", 0, "policy", "bandwidth_limit_mbit"), [-1.0, NAN]),
]


def _float_cases() -> Iterator[Any]:
    for kind, path, values in FLOAT_CASES:
        (message,) = [m for m in SAMPLES if type(m) is kind]
        builtins = msgspec.msgpack.decode(ENCODER.encode(message))
        for value in values:
            yield pytest.param(_with(builtins, path, value), id=f"{kind.__name__}.{path}={value}")


@pytest.mark.parametrize("payload", list(_float_cases()))
def test_a_float_no_sender_makes_is_a_malformed_message(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(payload)


def test_a_file_abort_naming_an_oversize_path_is_refused() -> None:
    """The path of a file the source could not read goes into the target's job-log record."""
    FileAbort(seq=1, reason="cannot read", path="a/b.txt").validate()
    with pytest.raises(ProtocolError, match="file_abort.path"):
        FileAbort(seq=1, reason="cannot read", path="x" * 5000).validate()


class _OlderHeld(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    tag="mass_delete_held",
    omit_defaults=True,
):
    """MassDeleteHeld as a peer before the hold's number decodes it."""

    mapping_id: int
    deletes: int
    entries: int
    root_missing: bool
    resent: bool = False


class _OlderEnded(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="mass_delete_ended"
):
    """MassDeleteEnded as a peer before the hold's number decodes and encodes it."""

    mapping_id: int
    reason: str


def test_a_holds_number_keeps_the_hold_messages_compatible_both_ways() -> None:
    """A hold's number (`hold`) is optional: without it both messages keep their bytes, a peer
    before it ignores it, and a message from such a peer decodes with 0 (unknown)."""
    older = _OlderEnded(mapping_id=3, reason="paths back")
    ended = MassDeleteEnded(mapping_id=3, reason="paths back")
    assert ENCODER.encode(ended) == msgspec.msgpack.encode(older)
    assert decode_payload(msgspec.msgpack.encode(older)) == ended
    numbered = MassDeleteEnded(mapping_id=3, reason="paths back", hold=9)
    assert msgspec.msgpack.decode(ENCODER.encode(numbered), type=_OlderEnded) == older
    held = MassDeleteHeld(mapping_id=3, deletes=1, entries=2, root_missing=True, hold=9)
    older_held = _OlderHeld(mapping_id=3, deletes=1, entries=2, root_missing=True)
    assert msgspec.msgpack.decode(ENCODER.encode(held), type=_OlderHeld) == older_held
    assert decode_payload(msgspec.msgpack.encode(older_held)) == msgspec.structs.replace(
        held, hold=0
    )
