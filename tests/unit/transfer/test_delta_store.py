"""The source's delta store does each piece of work once and keeps only what a link can still use."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from relaysync.protocol.messages import DeltaStart, FileEnd
from relaysync.transfer import _librsync
from relaysync.transfer import delta as delta_engine
from relaysync.transfer.builds import DeltaBuild
from relaysync.transfer.ops import Flush, Outgoing, SendOptions, iter_file_messages
from relaysync.transfer.signatures import DELTA_MAX_AGE_S, SignatureStore

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
    return [
        m
        for m in iter_file_messages(
            src, "f.bin", seq, base_hash=base, options=SendOptions(signatures=sigs)
        )
        if not isinstance(m, Flush)
    ]


def test_links_sending_one_delta_sign_the_new_version_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    assert len(reads) == 1, (
        f"the new version ({SIZE} bytes) was read and signed {len(reads)} times for 3 links"
    )
    assert sigs.has("f.bin", xxhash.xxh3_128(data).digest())  # kept for the next change's delta


def _delta_files(tmp: Path) -> list[Path]:
    return sorted((tmp / "sigs" / "delta").iterdir())


def test_deltas_of_superseded_versions_do_not_stay_on_disk(tmp_path: Path) -> None:
    """A build is keyed by the file's version: once the file changed again no link can join it,
    so the next build of that path unlinks it (not 10 minutes later)."""
    src, sigs, data, base = _source(tmp_path)
    for v in range(5):  # five rewrites of a third of the file, each sent as a delta
        at = (v * 997_331) % (SIZE - SIZE // 3)
        data[at : at + SIZE // 3] = os.urandom(SIZE // 3)
        (src / "f.bin").write_bytes(data)
        messages = _stream(src, sigs, base, v + 2)
        assert isinstance(messages[0], DeltaStart) and isinstance(messages[-1], FileEnd)
        base = messages[-1].hash
    deltas = _delta_files(tmp_path)
    assert len(deltas) <= 1, (
        f"{len(deltas)} delta files kept (file {SIZE} bytes); only the last can be joined"
    )


def test_a_link_streaming_a_superseded_delta_still_gets_all_of_it(tmp_path: Path) -> None:
    """Unlinking a superseded build never pulls its files from under a link that is streaming it."""
    src, sigs, data, base = _source(tmp_path)
    data[100:200] = os.urandom(100)
    (src / "f.bin").write_bytes(data)
    slow = iter_file_messages(src, "f.bin", 2, base_hash=base, options=SendOptions(signatures=sigs))
    first = next(slow)
    assert isinstance(first, DeltaStart)
    build = next(iter(sigs._builds.values()))
    assert build.done.wait(30)
    v1 = bytes(data)
    v1_hash = xxhash.xxh3_128(v1).digest()
    data[5000:6000] = os.urandom(1000)
    (src / "f.bin").write_bytes(data)
    newer = _stream(
        src, sigs, v1_hash, 3
    )  # a faster link: the next version, from the one just signed
    assert isinstance(newer[0], DeltaStart) and isinstance(newer[-1], FileEnd)
    assert not any(p.path.exists() for p in build.parts)  # superseded: unlinked
    rest = [m for m in slow if not isinstance(m, Flush)]
    assert isinstance(rest[-1], FileEnd) and rest[-1].hash == v1_hash


def test_a_failed_build_leaves_no_files(tmp_path: Path) -> None:
    src, sigs, data, base = _source(tmp_path)
    for sig in (tmp_path / "sigs" / "sig").iterdir():
        sig.write_bytes(b"not a signature")  # the search refuses it
    data[-10:] = b"0123456789"
    (src / "f.bin").write_bytes(data)
    kinds = [type(m).__name__ for m in _stream(src, sigs, base, 2)]
    # The search fails at once; the link either joined the build first (DeltaStart, FileAbort,
    # then the whole file) or found it already gone (the whole file): both send the file whole.
    assert kinds[-1] == "FileEnd" and "FileStart" in kinds
    assert kinds[0] == "FileStart" or (kinds[0] == "DeltaStart" and "FileAbort" in kinds)
    assert _delta_files(tmp_path) == []


def test_deltas_of_an_earlier_run_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    src, sigs, data, base = _source(tmp_path)
    data[:10] = b"0123456789"
    (src / "f.bin").write_bytes(data)
    assert isinstance(_stream(src, sigs, base, 2)[-1], FileEnd)
    assert _delta_files(tmp_path)
    SignatureStore(tmp_path / "sigs")  # the agent restarted: no link can join the old builds
    assert _delta_files(tmp_path) == []


def _signatures(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "sigs" / "sig").iterdir())


def test_a_deleted_files_signature_is_forgotten(tmp_path: Path) -> None:
    src, sigs, _data, base = _source(tmp_path)
    assert len(_signatures(tmp_path)) == 1
    (src / "f.bin").unlink()
    sigs.forget("f.bin")
    assert _signatures(tmp_path) == [] and not sigs.has("f.bin", base)


def test_a_renamed_files_signature_moves_so_its_next_change_is_a_delta(tmp_path: Path) -> None:
    src, sigs, data, base = _source(tmp_path)
    (src / "f.bin").rename(src / "g.bin")
    sigs.move("f.bin", "g.bin")
    assert (
        not sigs.has("f.bin", base) and sigs.has("g.bin", base) and len(_signatures(tmp_path)) == 1
    )
    data[100:110] = b"0123456789"
    (src / "g.bin").write_bytes(data)
    messages = [
        m
        for m in iter_file_messages(
            src, "g.bin", 3, base_hash=base, options=SendOptions(signatures=sigs)
        )
        if not isinstance(m, Flush)
    ]
    assert isinstance(messages[0], DeltaStart) and isinstance(messages[-1], FileEnd)
    assert messages[-1].hash == xxhash.xxh3_128(data).digest()
    assert _signatures(tmp_path) == [
        f"{sigs._key('g.bin')}.{messages[-1].hash.hex()}.sig"
    ]  # replaced, one per path


def test_a_rename_onto_a_signed_file_replaces_that_files_signature(tmp_path: Path) -> None:
    src, sigs, _data, base = _source(tmp_path)
    other = os.urandom(256 * 1024)
    (src / "g.bin").write_bytes(other)
    sigs.remember(src, "g.bin", xxhash.xxh3_128(other).digest())
    assert len(_signatures(tmp_path)) == 2
    (src / "f.bin").rename(src / "g.bin")
    sigs.move("f.bin", "g.bin")
    assert _signatures(tmp_path) == [f"{sigs._key('g.bin')}.{base.hex()}.sig"]


def test_a_signing_under_way_when_its_file_is_deleted_keeps_nothing(tmp_path: Path) -> None:
    """A link reading the file to send it when the delete is journaled: its signature would
    outlive the file."""
    src = tmp_path / "src"
    src.mkdir()
    sigs = SignatureStore(tmp_path / "sigs")
    data = os.urandom(256 * 1024)
    (src / "f.bin").write_bytes(data)
    digest = xxhash.xxh3_128(data).digest()
    signer = sigs.signer_for("f.bin", digest, len(data))
    assert signer is not None
    signer.update(data)
    sigs.forget("f.bin")  # the delete is journaled while the link still sends the file
    sigs.sent_whole(src, "f.bin", digest, len(data), signer)
    sigs.release("f.bin", digest)
    assert _signatures(tmp_path) == []
    sigs.remember(src, "f.bin", digest)  # a later version of the path is signed again
    assert sigs.has("f.bin", digest)


def test_the_index_of_signatures_survives_a_restart(tmp_path: Path) -> None:
    src, _sigs, _data, base = _source(tmp_path)
    reopened = SignatureStore(tmp_path / "sigs")
    reopened.forget("f.bin")
    assert _signatures(tmp_path) == []


class _LockWithGap:
    """The store's lock, running `gap` once right after the thread that armed it next releases
    it: another thread getting in between two steps of that thread, forced, not left to timing."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._armed_by = 0
        self._gap: Callable[[], None] | None = None

    def arm(self, gap: Callable[[], None]) -> None:
        self._armed_by, self._gap = threading.get_ident(), gap

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if self._gap is not None and threading.get_ident() == self._armed_by:
            gap, self._gap = self._gap, None
            gap()


def test_prune_never_unlinks_a_build_started_while_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """signatures.py: 'unlinking never pulls a file from under a reader'. A build of a version
    whose signature the state disk could not take keeps its base's signature, so a link that
    comes back after DELTA_MAX_AGE_S rebuilds the same key; prune must not unlink that new build
    between its lookup and its unlink (a link would find its parts gone: the file goes whole)."""
    src, sigs, data, base = _source(tmp_path)
    original = bytes(data)
    data[1000:1010] = b"0123456789"
    (src / "f.bin").write_bytes(data)

    def disk_full(basis: Path | int, sig_out: Path) -> bytes:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(delta_engine, "signature", disk_full)
    old = sigs.start_delta(src, "f.bin", base)
    assert old is not None and old.done.wait(30) and old.ok
    assert sigs.has("f.bin", base)  # the new version could not be signed: the base's stays
    long_ago = time.time() - 2 * DELTA_MAX_AGE_S
    for part in old.parts:
        os.utime(part.path, (long_ago, long_ago))
    joined: list[DeltaBuild] = []

    def link_asks_again() -> None:  # a link sending this version again, right then
        build = sigs.start_delta(src, "f.bin", base)
        assert build is not None and build is not old and build.done.wait(30) and build.ok
        joined.append(build)

    gapped = _LockWithGap(sigs._lock)
    sigs._lock = gapped  # type: ignore[assignment]
    gapped.arm(link_asks_again)  # fires when prune leaves the lock after its lookup
    sigs.prune()
    assert joined, "prune took the store's lock only once: the gap never came"
    files = sigs.open_parts(joined[0])
    assert files is not None, "prune unlinked the parts of a build a link had just joined"
    try:
        delta_bytes = b"".join(f.read() for f in files)
    finally:
        for f in files:
            f.close()
    basis, new, out = tmp_path / "basis", tmp_path / "delta", tmp_path / "out"
    basis.write_bytes(original)
    new.write_bytes(delta_bytes)
    _librsync.patch(basis, new, out)
    assert out.read_bytes() == bytes(data)
