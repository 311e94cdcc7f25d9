"""Delta transfer ("different patch"): librsync signature/delta/patch, codec, and the receiver."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaysync.protocol.messages import (
    Checkpoint,
    DeltaStart,
    Error,
    ErrorCode,
    FileChunk,
    FileStart,
)
from relaysync.transfer import _librsync, codec
from relaysync.transfer import delta as delta_engine
from relaysync.transfer.ops import Flush, SendOptions, iter_file_messages
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.signatures import SignatureStore
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest


def _roundtrip(tmp: Path, old: bytes, new: bytes) -> bytes:
    (tmp / "old").write_bytes(old)
    (tmp / "new").write_bytes(new)
    delta_engine.signature(tmp / "old", tmp / "sig")
    delta_engine.delta(tmp / "sig", tmp / "new", tmp / "delta")
    _librsync.patch(tmp / "old", tmp / "delta", tmp / "out")
    return (tmp / "out").read_bytes()


edits = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace"]),
        st.floats(0, 1),
        st.binary(min_size=0, max_size=5000),
    ),
    max_size=6,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["random", "text", "zeros"]), size=st.integers(0, 300_000), changes=edits
)
def test_patch_reproduces_new_version(tmp_path: Path, kind: str, size: int, changes: list) -> None:
    rnd = random.Random(size)
    if kind == "random":
        old = rnd.randbytes(size)
    elif kind == "text":
        old = b"".join(f"line {i} {rnd.random()}\n".encode() for i in range(size // 30))
    else:
        old = bytes(size // 2) + rnd.randbytes(size // 8) + bytes(size // 2)
    new = bytearray(old)
    for op, where, data in changes:
        at = int(where * len(new))
        if op == "insert":
            new[at:at] = data
        elif op == "delete":
            del new[at : at + len(data)]
        else:
            new[at : at + len(data)] = data
    assert _roundtrip(tmp_path, old, bytes(new)) == bytes(new)


def test_truncate_append_and_edits_at_both_ends(tmp_path: Path) -> None:
    old = os.urandom(3 * 1024 * 1024 + 17)
    for new in (old[:1000], old + os.urandom(300_000), b"X" + old[1:-1] + b"Y", b""):
        assert _roundtrip(tmp_path, old, new) == new


def _delta_of(tmp: Path, old: bytes, new: bytes) -> tuple[int, int]:
    (tmp / "old").write_bytes(old)
    (tmp / "new").write_bytes(new)
    delta_engine.signature(tmp / "old", tmp / "sig")
    return delta_engine.delta(tmp / "sig", tmp / "new", tmp / "delta")


def test_edits_across_the_read_buffer_cost_only_their_blocks(tmp_path: Path) -> None:
    """10 MiB (the search reads 4 MiB at a time): edits and an insertion that straddle the
    buffer's ends are found, and what is sent is the edits plus at most a block on each side."""
    old = os.urandom(10 * 1024 * 1024)
    new = bytearray(old)
    edits = [(4 * 1024 * 1024 - 5000, 10_000), (8 * 1024 * 1024 - 3, 7), (123_457, 20_000)]
    for at, n in edits:
        new[at : at + n] = os.urandom(n)
    new[4 * 1024 * 1024 + 30_000 : 4 * 1024 * 1024 + 30_000] = os.urandom(
        150_000
    )  # shifts the rest
    literal, copied = _delta_of(tmp_path, old, bytes(new))
    block = delta_engine.block_len_for(len(old))
    changed = sum(n for _, n in edits) + 150_000
    assert changed <= literal <= changed + 4 * 2 * block, (literal, changed)
    assert literal + copied == len(new)
    _librsync.patch(tmp_path / "old", tmp_path / "delta", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == bytes(new)


def test_the_short_last_block_matches_at_the_end(tmp_path: Path) -> None:
    old = os.urandom(3 * 2048 + 905)
    literal, copied = _delta_of(
        tmp_path, old, bytes([old[0] ^ 0xFF]) + old[1:]
    )  # first block differs
    assert (literal, copied) == (2048, len(old) - 2048)


def test_repeated_blocks_and_zeros_copy_from_one_block(tmp_path: Path) -> None:
    old = bytes(8 * 1024 * 1024)
    new = bytearray(old)
    new[5_000_000:5_000_100] = b"x" * 100
    literal, copied = _delta_of(tmp_path, old, bytes(new))
    assert literal <= 2 * 2048 and literal + copied == len(new)
    _librsync.patch(tmp_path / "old", tmp_path / "delta", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == bytes(new)


def test_empty_and_tiny_versions(tmp_path: Path) -> None:
    data = os.urandom(5000)
    for old, new in ((b"", data), (data, b""), (b"", b""), (data, data[:10]), (data[:10], data)):
        literal, copied = _delta_of(tmp_path, old, new)
        assert literal + copied == len(new)
        _librsync.patch(tmp_path / "old", tmp_path / "delta", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == new


@pytest.mark.parametrize("damage", ["empty", "truncated", "magic", "count", "block_len", "noise"])
def test_a_damaged_signature_is_refused_not_trusted(tmp_path: Path, damage: str) -> None:
    (tmp_path / "old").write_bytes(os.urandom(100_000))
    delta_engine.signature(tmp_path / "old", tmp_path / "sig")
    sig = bytearray((tmp_path / "sig").read_bytes())
    if damage == "empty":
        sig = bytearray()
    elif damage == "truncated":
        del sig[-5:]
    elif damage == "magic":
        sig[0:8] = b"RS\x02\x36XXXX"
    elif damage == "count":
        sig[24:32] = (2**40).to_bytes(8, "little")
    elif damage == "block_len":
        sig[8:12] = (0).to_bytes(4, "little")
    else:
        sig = bytearray(os.urandom(len(sig)))
    (tmp_path / "sig").write_bytes(bytes(sig))
    with pytest.raises(delta_engine.SignatureError, match="signature"):
        delta_engine.delta(tmp_path / "sig", tmp_path / "old", tmp_path / "delta")


def _same_weak_sum_blocks(count: int, rnd: random.Random) -> bytes:
    """`count` distinct 2 KiB blocks with one Rabin-Karp weak sum: the sum is linear, so adding
    a byte pattern whose weighted sum is 0 mod 2^32 (found by search below) keeps it."""
    mult, width = 0x08104225, 12
    weights = [pow(mult, width - 1 - i, 1 << 32) for i in range(width)]
    seen: dict[int, tuple[int, int, int, int]] = {}
    pattern = None
    for i in range(width):
        for j in range(i + 1, width):
            for a in range(-63, 64):
                for b in range(-63, 64):
                    if a == 0 or b == 0:
                        continue
                    h = (a * weights[i] + b * weights[j]) & 0xFFFFFFFF
                    other = seen.get(h)
                    if other is not None and other[:2] != (i, j):
                        d = [0] * width
                        d[i] += a
                        d[j] += b
                        d[other[0]] -= other[2]
                        d[other[1]] -= other[3]
                        if any(d) and all(-128 <= x <= 127 for x in d):
                            pattern = d
                            break
                    seen[h] = (i, j, a, b)
                if pattern:
                    break
            if pattern:
                break
        if pattern:
            break
    assert pattern is not None
    slots = 2048 // width
    blocks = []
    for _ in range(count):
        bits = rnd.getrandbits(slots)
        block = bytearray([128]) * 2048
        for slot in range(slots):
            if bits >> slot & 1:
                for k in range(width):
                    block[slot * width + k] += pattern[k]
        blocks.append(bytes(block))
    return b"".join(blocks)


@pytest.mark.timeout(60)
def test_blocks_sharing_one_weak_sum_do_not_make_the_search_quadratic(tmp_path: Path) -> None:
    """16,384 distinct blocks with one weak sum, and 4 MiB of new data made of more of them:
    with unbounded hash chains this took 67 s; bounded, well under a second."""
    rnd = random.Random(3)
    old = _same_weak_sum_blocks(16384, rnd)
    new = _same_weak_sum_blocks(2048, rnd) + old[: 1024 * 1024]
    literal, copied = _delta_of(tmp_path, old, new)
    assert literal + copied == len(new) and copied >= 1024 * 1024
    _librsync.patch(tmp_path / "old", tmp_path / "delta", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new


# A block of 2048 bytes, six of them non-zero, whose weak sum is that of 2048 zeros (found by a
# birthday search): with it in the base, every byte offset of a run of zeros is a candidate.
_ZERO_WEAK_BLOCK = {174: 75, 721: 200, 1001: 70, 1057: 37, 1857: 198, 1877: 72}


def test_content_crafted_to_miss_at_every_byte_costs_a_bounded_number_of_strong_hashes(
    tmp_path: Path,
) -> None:
    """A new version of zeros against a base holding that block: unbounded, the search hashed a
    whole block at every byte (0.4 s CPU for 4 MiB, ~13 min for 1 GiB); the misses are capped
    per block of input, and the delta still rebuilds the new version."""
    from relaysync.transfer import _blocksearch

    block_len, size = 2048, 4 * 1024 * 1024
    assert delta_engine.block_len_for(size) == block_len
    block = bytearray(block_len)
    for i, v in _ZERO_WEAK_BLOCK.items():
        block[i] = v
    assert (
        _blocksearch.block_sums(bytes(block), block_len)[0]
        == _blocksearch.block_sums(bytes(block_len), block_len)[0]
    )
    base = bytearray(os.urandom(size))
    base[:block_len] = block
    (tmp_path / "old").write_bytes(base)
    (tmp_path / "new").write_bytes(bytes(size))
    delta_engine.signature(tmp_path / "old", tmp_path / "sig")
    with open(tmp_path / "new", "rb") as new, open(tmp_path / "delta", "wb") as out:
        literal, copied, misses = _blocksearch.delta(
            (tmp_path / "sig").read_bytes(), new.fileno(), 0, -1, out.fileno()
        )
    assert literal + copied == size
    assert misses <= 4096 + size // block_len * 8  # not one per byte (4 million)
    _librsync.patch(tmp_path / "old", tmp_path / "delta", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == bytes(size)


def test_huge_files_keep_the_block_within_the_search_limit() -> None:
    assert delta_engine.block_len_for(0) == delta_engine.MIN_BLOCK_BYTES
    assert delta_engine.block_len_for(100 * 1024 * 1024) == 2048
    assert delta_engine.block_len_for(1 << 40) == delta_engine.MAX_BLOCK_BYTES


def test_a_failed_signature_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300_000)
    (src / "f.bin").write_bytes(data)
    sigs = SignatureStore(tmp_path / "sigs")

    def disk_full(basis: Path, sig_out: Path) -> bytes:
        sig_out.write_bytes(b"RSYNSIG1 half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(delta_engine, "signature", disk_full)
    sigs.remember(src, "f.bin", xxhash.xxh3_128(data).digest())
    assert list((tmp_path / "sigs" / "sig").iterdir()) == []


def test_codec_skips_incompressible_and_round_trips() -> None:
    z = codec.codec_for_level(3)
    text = b"hello world " * 10_000
    cid, payload = codec.encode_chunk(text, z)
    assert cid == codec.Zstd.ID and len(payload) < len(text) / 10
    assert codec.decode_chunk(cid, payload) == text
    noise = os.urandom(100_000)
    assert codec.encode_chunk(noise, z) == (codec.Plain.ID, noise)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, TargetFolder, SignatureStore]:
    src = tmp_path / "src"
    src.mkdir()
    root = tmp_path / "dst"
    root.mkdir()
    folder = TargetFolder(
        mapping_id=1, source_node="s", root=root, manifest=Manifest(tmp_path / "m.db"), durable=True
    )
    return src, folder, SignatureStore(tmp_path / "sigs")


def _send(
    src: Path, folder: TargetFolder, seq: int, base: bytes, options: SendOptions
) -> tuple[list, list]:
    msgs = [
        m
        for m in iter_file_messages(src, "big.bin", seq, base_hash=base, options=options)
        if not isinstance(m, Flush)
    ]
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(
        msgs + [Checkpoint(seq=seq)]
    )
    return msgs, replies


def test_update_goes_as_small_delta(pair: tuple[Path, TargetFolder, SignatureStore]) -> None:
    src, folder, sigs = pair
    options = SendOptions(signatures=sigs)
    v1 = os.urandom(4 * 1024 * 1024)
    (src / "big.bin").write_bytes(v1)
    msgs, _ = _send(src, folder, 1, b"", options)
    assert isinstance(msgs[0], FileStart)
    v2 = bytearray(v1)
    v2[2_000_000:2_010_000] = os.urandom(10_000)
    (src / "big.bin").write_bytes(v2)
    msgs, replies = _send(src, folder, 2, xxhash.xxh3_128(v1).digest(), options)
    assert isinstance(msgs[0], DeltaStart)
    wire = sum(len(m.data) for m in msgs if isinstance(m, FileChunk))
    assert wire < 60_000, wire
    assert not any(isinstance(r, Error) for r in replies)
    assert (folder.root / "big.bin").read_bytes() == bytes(v2)


def test_base_mismatch_asks_for_the_whole_file(
    pair: tuple[Path, TargetFolder, SignatureStore],
) -> None:
    src, folder, sigs = pair
    options = SendOptions(signatures=sigs)
    v1 = os.urandom(200_000)
    (src / "big.bin").write_bytes(v1)
    _send(src, folder, 1, b"", options)
    (folder.root / "big.bin").write_bytes(os.urandom(200_000))  # the target's copy diverged
    folder.manifest.put_many([])
    (src / "big.bin").write_bytes(v1[:-10] + b"0123456789")
    _, replies = _send(src, folder, 2, xxhash.xxh3_128(v1).digest(), options)
    assert [r.code for r in replies if isinstance(r, Error)] == [ErrorCode.BASE_MISMATCH]
    options.whole_file_seqs.add(2)
    msgs, replies = _send(src, folder, 2, xxhash.xxh3_128(v1).digest(), options)
    assert isinstance(msgs[0], FileStart)
    assert (folder.root / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


def test_flipped_bit_in_delta_is_never_committed(
    pair: tuple[Path, TargetFolder, SignatureStore],
) -> None:
    src, folder, sigs = pair
    options = SendOptions(signatures=sigs)
    v1 = os.urandom(500_000)
    (src / "big.bin").write_bytes(v1)
    _send(src, folder, 1, b"", options)
    v2 = v1[:250_000] + b"new bytes in the middle" + v1[250_000:]
    (src / "big.bin").write_bytes(v2)
    msgs = [
        m
        for m in iter_file_messages(
            src, "big.bin", 2, base_hash=xxhash.xxh3_128(v1).digest(), options=options
        )
        if not isinstance(m, Flush)
    ]
    i = next(i for i, m in enumerate(msgs) if isinstance(m, FileChunk))
    data = bytearray(msgs[i].data)
    data[len(data) // 2] ^= 0x01
    msgs[i] = FileChunk(seq=2, offset=msgs[i].offset, data=bytes(data), codec=msgs[i].codec)
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(msgs + [Checkpoint(seq=2)])
    assert [r.code for r in replies if isinstance(r, Error)] == [ErrorCode.HASH_MISMATCH]
    assert (folder.root / "big.bin").read_bytes() == v1
    assert [p.name for p in folder.root.iterdir()] == ["big.bin"]


def test_links_signing_the_same_version_at_once_do_not_fail(tmp_path: Path) -> None:
    """Every target link signs what it sent; two at once must not trip over each other's temp file."""
    import threading

    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(300_000)
    (src / "f.bin").write_bytes(data)
    sigs = SignatureStore(tmp_path / "sigs")
    digest = xxhash.xxh3_128(data).digest()
    errors: list[BaseException] = []

    def sign() -> None:
        try:
            for _ in range(20):
                sigs.remember(src, "f.bin", digest)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=sign) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sigs.has("f.bin", digest)
