"""The source's delta store does each piece of work once and keeps only what a link can still use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from relaysync.protocol.messages import DeltaStart, FileEnd
from relaysync.transfer import delta as delta_engine
from relaysync.transfer.ops import Flush, Outgoing, SendOptions, iter_file_messages
from relaysync.transfer.signatures import SignatureStore

SIZE = 4 * 1024 * 1024


def _source(tmp: Path) -> tuple[Path, SignatureStore, bytearray, bytes]:
    """A source holding f.bin (random, SIZE bytes), signed as after it was sent."""
    src = tmp / "src"
    src.mkdir()
    data = bytearray(os.urandom(SIZE))
    (src / "f.bin").write_bytes(data)
    sigs = SignatureStore(tmp / "sigs")
    base = xxhash.xxh3_128(data).digest()
    sigs.remember(src, "f.bin", base)
    return src, sigs, data, base


def _stream(src: Path, sigs: SignatureStore, base: bytes, seq: int) -> list[Outgoing]:
    return [m for m in iter_file_messages(src, "f.bin", seq, base_hash=base, options=SendOptions(signatures=sigs))
            if not isinstance(m, Flush)]


def test_links_sending_one_delta_sign_the_new_version_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """architecture.md: 'When many links send one version, one of them signs it.'"""
    src, sigs, data, base = _source(tmp_path)
    data[1000:1010] = b"0123456789"
    (src / "f.bin").write_bytes(data)
    reads: list[object] = []
    real = delta_engine.signature

    def counting(basis: Path | int, sig_out: Path) -> bytes:
        reads.append(basis)
        return real(basis, sig_out)

    monkeypatch.setattr(delta_engine, "signature", counting)
    for _link in range(3):  # three targets of the mapping
        messages = _stream(src, sigs, base, 2)
        assert isinstance(messages[0], DeltaStart) and isinstance(messages[-1], FileEnd)
        assert messages[-1].hash == xxhash.xxh3_128(data).digest()
    assert len(reads) == 1, f"the new version ({SIZE} bytes) was read and signed {len(reads)} times for 3 links"
    assert sigs.has("f.bin", xxhash.xxh3_128(data).digest())  # kept for the next change's delta
