"""A delta of a large file patches into the new version's named partial: a session cut mid-delta
leaves a prefix of the new version, listed and resumed as a whole file from its last whole chunk."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import xxhash

from relaysync.constants import CHUNK_BYTES
from relaysync.protocol.framing import decode_payload
from relaysync.protocol.messages import (
    ENCODER,
    Ack,
    AnyMessage,
    Checkpoint,
    DeltaStart,
    Error,
    ErrorCode,
    FileChunk,
    FileStart,
)
from relaysync.transfer import ops, staging
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.signatures import SignatureStore
from relaysync.transfer.target_folder import RESUME_MIN_BYTES, TargetFolder
from relaysync.watch.changes import JournalRecord
from relaysync.watch.manifest import Entry, Manifest

SIZE = RESUME_MIN_BYTES + 4 * CHUNK_BYTES  # 12 MiB: large enough for a named partial


def _update(
    tmp_path: Path, *, edit: bool = False
) -> tuple[Path, TargetFolder, SignatureStore, JournalRecord]:
    """Source and target hold v1 (its signature kept on the source); the source then writes v2
    (random, or with `edit` v1 with 1000 bytes changed): the record of that write, a delta."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    old = os.urandom(SIZE)
    for root in (src, dst):
        (root / "f.bin").write_bytes(old)
    st = os.stat(dst / "f.bin")
    base = xxhash.xxh3_128_digest(old)
    folder = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=dst,
        manifest=Manifest(tmp_path / "m.db"),
        durable=False,
    )
    folder.manifest.put_many(
        [Entry(path="f.bin", kind="f", size=SIZE, mtime_ns=st.st_mtime_ns, mode=0o644, hash=base)]
    )
    sigs = SignatureStore(tmp_path / "sigs")
    sigs.remember(src, "f.bin", base)
    data = (
        old[: SIZE // 2] + os.urandom(1000) + old[SIZE // 2 + 1000 :] if edit else os.urandom(SIZE)
    )
    (src / "f.bin").write_bytes(data)
    record = JournalRecord(
        seq=2,
        op="write",
        path="f.bin",
        base_hash=base,
        entry=Entry(path="f.bin", kind="f", size=SIZE, hash=xxhash.xxh3_128_digest(data)),
    )
    return src, folder, sigs, record


def _sent(
    src: Path, record: JournalRecord, folder: TargetFolder, sigs: SignatureStore
) -> list[AnyMessage]:
    """What a link sends in a session, from the partials of the target's MappingState."""
    options = ops.SendOptions(
        signatures=sigs, resume={(p.path, p.hash): p.size for p in folder.list_partials()}
    )
    return [m for m in ops.record_messages(src, record, options) if not isinstance(m, ops.Flush)]


def _data_bytes(msgs: list[AnyMessage]) -> int:
    return sum(len(m.data) for m in msgs if isinstance(m, FileChunk))


def _cut_mid_delta(
    src: Path, record: JournalRecord, folder: TargetFolder, sigs: SignatureStore
) -> int:
    """A first session that ends (link dropped) after about half the delta: returns what is listed."""
    first = _sent(src, record, folder, sigs)
    start = first[0]
    assert isinstance(start, DeltaStart) and start.expected_hash == record.entry.hash  # type: ignore[union-attr]
    chunks = [m for m in first if isinstance(m, FileChunk)]
    half = next(i for i in range(len(chunks)) if sum(len(c.data) for c in chunks[:i]) >= SIZE // 2)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([start, *chunks[:half]]) == []
    session.close()
    (listed,) = folder.list_partials()
    assert (listed.path, listed.hash) == ("f.bin", start.expected_hash)
    assert listed.size % CHUNK_BYTES == 0 and listed.size >= 2 * CHUNK_BYTES
    part = staging.partial_name_for(folder.root / "f.bin", start.expected_hash, 1)
    assert (src / "f.bin").read_bytes().startswith(part.read_bytes())  # a prefix of the new version
    staging.clean_stale_temps(folder.root, keep=folder.partial_files())  # a restart keeps it
    assert part.exists()
    return listed.size


def _commit(folder: TargetFolder, msgs: list[AnyMessage]) -> list[AnyMessage]:
    session = ReceiverSession(folder, "j", lambda *_: None)
    replies = session.apply_batch([*msgs, Checkpoint(seq=2)])
    session.close()
    return replies


def _temps(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".relaysync."))


def test_a_delta_cut_midway_resumes_whole_from_what_was_patched(tmp_path: Path) -> None:
    src, folder, sigs, record = _update(tmp_path)
    held = _cut_mid_delta(src, record, folder, sigs)
    again = _sent(src, record, folder, sigs)
    start = again[0]
    assert isinstance(start, FileStart) and start.offset == held
    assert _data_bytes(again) <= SIZE - held + CHUNK_BYTES  # what was not verified, plus one chunk
    assert _commit(folder, again) == [Ack(mapping_id=1, watermark=2)]
    assert (folder.root / "f.bin").read_bytes() == (src / "f.bin").read_bytes()
    assert folder.list_partials() == () and _temps(folder.root) == []


def test_a_patched_prefix_that_is_not_the_new_versions_is_never_committed(tmp_path: Path) -> None:
    """The whole-file hash covers the resumed prefix: a wrong one ends in HASH_MISMATCH, the
    partial goes, and the next try sends the file whole."""
    src, folder, sigs, record = _update(tmp_path)
    held = _cut_mid_delta(src, record, folder, sigs)
    part = staging.partial_name_for(folder.root / "f.bin", record.entry.hash, 1)  # type: ignore[union-attr]
    with open(part, "r+b") as f:
        f.seek(held // 2)
        byte = f.read(1)
        f.seek(held // 2)
        f.write(bytes([byte[0] ^ 1]))
    old = (folder.root / "f.bin").read_bytes()
    replies = _commit(folder, _sent(src, record, folder, sigs))
    assert [r.code for r in replies if isinstance(r, Error)] == [ErrorCode.HASH_MISMATCH]
    assert (folder.root / "f.bin").read_bytes() == old
    assert folder.list_partials() == () and _temps(folder.root) == []
    again = _sent(src, record, folder, sigs)
    assert isinstance(again[0], FileStart) and again[0].offset == 0
    assert _commit(folder, again) == [Ack(mapping_id=1, watermark=2)]
    assert (folder.root / "f.bin").read_bytes() == (src / "f.bin").read_bytes()


def test_a_delta_smaller_than_the_rest_replaces_the_partial(tmp_path: Path) -> None:
    """Resuming whole is for a rest larger than the file's delta: after a small edit the delta
    goes again (the ratio of the attempt that was cut says it is small), into a fresh partial."""
    src, folder, sigs, record = _update(tmp_path, edit=True)
    assert isinstance(_sent(src, record, folder, sigs)[0], DeltaStart)  # the attempt that was cut
    new_hash = record.entry.hash  # type: ignore[union-attr]
    part = staging.partial_name_for(folder.root / "f.bin", new_hash, 1)
    part.write_bytes(
        os.urandom(RESUME_MIN_BYTES // 2)
    )  # held: less than the rest, more than the delta
    folder.add_partial("f.bin", new_hash)
    again = _sent(src, record, folder, sigs)
    assert isinstance(again[0], DeltaStart) and _data_bytes(again) < CHUNK_BYTES
    assert _commit(folder, again) == [Ack(mapping_id=1, watermark=2)]
    assert folder.delta_bytes("f.bin", new_hash) == _data_bytes(
        again
    )  # what a relay resumes its child by
    assert (folder.root / "f.bin").read_bytes() == (src / "f.bin").read_bytes()
    assert folder.list_partials() == () and _temps(folder.root) == []


def test_a_small_delta_leaves_no_temp_file_when_cut(tmp_path: Path) -> None:
    """Below RESUME_MIN_BYTES a delta's output is a plain temp file, removed when the session ends."""
    src, folder, sigs, record = _update(tmp_path)
    msgs = _sent(src, record, folder, sigs)
    small = msgspec.structs.replace(msgs[0], size=RESUME_MIN_BYTES - 1)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([small, msgs[1]]) == []
    session.close()
    assert folder.list_partials() == () and _temps(folder.root) == []


class _OldDeltaStart(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="delta"):
    """DeltaStart as the previous release knows it (no expected_hash)."""

    seq: int
    path: str
    size: int
    mode: int
    mtime_ns: int
    base_hash: bytes
    changed_at: float = 0.0
    parts: int = 1


def test_delta_start_decodes_both_ways_across_releases() -> None:
    """No capability needed: an older peer ignores expected_hash, and one it omits is b""."""
    new = DeltaStart(
        seq=1,
        path="f",
        size=1,
        mode=0o644,
        mtime_ns=1,
        base_hash=b"b" * 16,
        expected_hash=b"e" * 16,
    )
    old = msgspec.msgpack.decode(ENCODER.encode(new), type=_OldDeltaStart)
    assert (old.path, old.base_hash) == ("f", b"b" * 16)
    got = decode_payload(ENCODER.encode(old))
    assert isinstance(got, DeltaStart) and got.expected_hash == b""
