"""Deltas streamed while they are computed (source) and applied while they arrive (target)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

from relaysync.constants import SMALL_FILE_BYTES
from relaysync.errors import HashMismatch, TransferError
from relaysync.protocol.messages import (
    DeltaStart,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    SmallFile,
)
from relaysync.transfer import _librsync
from relaysync.transfer import delta as delta_engine
from relaysync.transfer.ops import Flush, SendOptions, iter_file_messages
from relaysync.transfer.patching import StreamingPatch
from relaysync.transfer.signatures import SignatureStore
from relaysync.transfer.signing import INLINE_SIGN_MAX_BYTES


@pytest.fixture(autouse=True)
def _dir_fds() -> Iterator[None]:
    yield
    while _DIR_FDS:
        os.close(_DIR_FDS.pop())


_DIR_FDS: list[int] = []


def _patch(folder: Path, basis: Path, **kwargs: Any) -> StreamingPatch:
    """A StreamingPatch of `basis` (open, taken over) into `folder` (held open until the test ends)."""
    _DIR_FDS.append(os.open(folder, os.O_PATH | os.O_DIRECTORY))
    return StreamingPatch(basis, base=os.open(basis, os.O_RDONLY), dir_fd=_DIR_FDS[-1], **kwargs)


def _versions(tmp: Path, size: int = 3 * 1024 * 1024) -> tuple[Path, bytes, bytes, Path]:
    old = os.urandom(size)
    new = bytearray(old)
    for at in range(0, size, size // 7):
        new[at : at + 3000] = os.urandom(3000)
    new[size // 2 : size // 2] = os.urandom(50_000)  # an insertion shifts the rest
    (tmp / "old").write_bytes(old)
    (tmp / "new").write_bytes(new)
    delta_engine.signature(tmp / "old", tmp / "sig")
    delta_engine.delta(tmp / "sig", tmp / "new", tmp / "delta")
    return tmp / "delta", old, bytes(new), tmp / "old"


@pytest.mark.parametrize("piece", [1, 4096, 1_000_000])
def test_a_delta_fed_in_pieces_rebuilds_the_new_version(tmp_path: Path, piece: int) -> None:
    delta, old, new, basis = _versions(tmp_path)
    data = delta.read_bytes()
    if piece == 1:
        data, piece = data[:200_000], 1  # byte by byte is slow: a prefix, then the rest at once
        rest = delta.read_bytes()[200_000:]
    else:
        rest = b""
    patch = _patch(tmp_path, basis, size=len(new), mode=0o644, mtime_ns=0)
    offset = 0
    for i in range(0, len(data), piece):
        patch.write(offset, data[i : i + piece])
        offset += len(data[i : i + piece])
    if rest:
        patch.write(offset, rest)
    out = patch.finish()
    out.finish(xxhash.xxh3_128(new).digest())  # size and hash checked as for any received file
    assert out.temp.read_bytes() == new
    out.discard()
    assert basis.read_bytes() == old


@pytest.mark.parametrize("where", [0, 10, "middle"])
def test_a_corrupt_delta_is_never_taken_for_the_new_version(
    tmp_path: Path, where: int | str
) -> None:
    """librsync refuses it (bad magic, bad command), or the whole-file hash catches it."""
    delta, _, new, basis = _versions(tmp_path)
    data = bytearray(delta.read_bytes())
    data[len(data) // 2 if where == "middle" else int(where)] ^= 0xFF
    patch = _patch(tmp_path, basis, size=len(new), mode=0o644, mtime_ns=0)
    with pytest.raises((TransferError, HashMismatch)):
        for i in range(0, len(data), 65536):
            patch.write(i, bytes(data[i : i + 65536]))
        patch.finish().finish(xxhash.xxh3_128(new).digest())
    patch.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["delta", "new", "old", "sig"]


def test_a_delta_abandoned_mid_stream_stops_its_thread(tmp_path: Path) -> None:
    delta, _, new, basis = _versions(tmp_path)
    patch = _patch(tmp_path, basis, size=len(new), mode=0o644, mtime_ns=0)
    patch.write(0, delta.read_bytes()[:100_000])
    before = threading.active_count()
    patch.discard()  # the session ended: EOF to librsync, thread joined, temp removed
    assert threading.active_count() == before - 1
    assert not patch.temp.exists()


def _source(
    tmp: Path, size: int, *, signed: bool = True
) -> tuple[Path, SignatureStore, bytes, bytes]:
    """A source folder holding f.bin (random, `size` bytes) and its hash; with `signed`, that
    version's signature is kept, as after it was sent."""
    src = tmp / "src"
    src.mkdir()
    old = os.urandom(size)
    (src / "f.bin").write_bytes(old)
    sigs = SignatureStore(tmp / "sigs")
    base = xxhash.xxh3_128(old).digest()
    if signed:
        sigs.remember(src, "f.bin", base)
    return src, sigs, old, base


def _stream(src: Path, sigs: SignatureStore, base: bytes, seq: int = 2) -> list[object]:
    return list(
        iter_file_messages(src, "f.bin", seq, base_hash=base, options=SendOptions(signatures=sigs))
    )


def test_links_share_one_delta_build_and_stream_it(tmp_path: Path) -> None:
    src, sigs, old, base = _source(tmp_path, 8 * 1024 * 1024)
    new = old[:4_000_000] + os.urandom(1_000_000) + old[5_000_000:]
    (src / "f.bin").write_bytes(new)
    first = sigs.start_delta(src, "f.bin", base)
    second = sigs.start_delta(src, "f.bin", base)
    assert first is not None and first is second  # computed once for every target
    messages = _stream(src, sigs, base)
    assert isinstance(messages[0], DeltaStart)
    chunks = [m for m in messages if isinstance(m, FileChunk)]
    assert sum(len(c.data) for c in chunks) < 1_200_000
    end = messages[-1]
    assert isinstance(end, FileEnd) and end.hash == xxhash.xxh3_128(new).digest()
    assert all(isinstance(m, DeltaStart | FileChunk | FileEnd | Flush) for m in messages)


def test_every_target_link_gets_the_delta_not_only_the_first(tmp_path: Path) -> None:
    """The first link to stream a change signs the new version, which replaces the base's
    signature: the next links join its delta build instead of sending the whole file."""
    src, sigs, old, base = _source(tmp_path, 8 * 1024 * 1024)
    (src / "f.bin").write_bytes(old[:4_000_000] + b"edit" + old[4_000_004:])
    first, second = _stream(src, sigs, base), _stream(src, sigs, base)
    assert isinstance(first[0], DeltaStart) and isinstance(second[0], DeltaStart)
    assert [
        sum(len(m.data) for m in msgs if isinstance(m, FileChunk)) < 100_000
        for msgs in (first, second)
    ] == [True, True]


def test_auto_sends_whole_after_a_delta_that_saved_nothing(tmp_path: Path) -> None:
    src, sigs, old, base = _source(tmp_path, 1024 * 1024)
    (src / "f.bin").write_bytes(os.urandom(1024 * 1024))  # nothing in common with the old one
    assert isinstance(_stream(src, sigs, base)[0], DeltaStart)  # first time: a delta is tried
    assert not sigs.delta_pays("f.bin")
    assert isinstance(
        _stream(src, sigs, base, seq=3)[0], FileStart
    )  # the ratio seen so far decides


@pytest.mark.parametrize("size", [SMALL_FILE_BYTES, SMALL_FILE_BYTES + 1, 3 * 1024 * 1024 + 777])
def test_a_version_sent_whole_is_signed_from_the_same_read(tmp_path: Path, size: int) -> None:
    """No second read and no background signer: the signature is kept by the time the file's
    last message goes (one SmallFile, or FileStart ... FileEnd), and it is exactly the one the
    file-based signer writes."""
    src, sigs, _, digest = _source(tmp_path, size, signed=False)
    messages = list(
        iter_file_messages(src, "f.bin", 1, options=SendOptions(signatures=sigs, small_files=True))
    )
    if size <= SMALL_FILE_BYTES:
        assert [type(m) for m in messages if not isinstance(m, Flush)] == [SmallFile]
    else:
        assert isinstance(messages[0], FileStart) and isinstance(messages[-1], FileEnd)
    assert sigs.has("f.bin", digest)
    kept = next((tmp_path / "sigs" / "sig").glob("*.sig")).read_bytes()
    assert delta_engine.signature(src / "f.bin", tmp_path / "reference.sig") == digest
    assert kept == (tmp_path / "reference.sig").read_bytes()


def test_a_large_version_is_signed_in_the_background_and_a_delta_waits_for_it(
    tmp_path: Path,
) -> None:
    src, sigs, _, base = _source(tmp_path, INLINE_SIGN_MAX_BYTES + 4096, signed=False)
    messages = list(iter_file_messages(src, "f.bin", 1, options=SendOptions(signatures=sigs)))
    assert isinstance(messages[-1], FileEnd) and messages[-1].hash == base
    sigs.sign_later(src, "f.bin", base)  # a second link: queued once
    build = sigs.start_delta(src, "f.bin", base)  # a delta asked for at once waits for it
    assert build is not None and sigs.has("f.bin", base)
    build.done.wait(60)
    assert build.ok


def test_a_delta_still_ends_when_the_state_disk_cannot_take_the_new_signature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, sigs, old, base = _source(tmp_path, 2 * 1024 * 1024)
    new = old[:1000] + b"changed" + old[1000:]
    (src / "f.bin").write_bytes(new)

    def disk_full(basis: Path, sig_out: Path) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(delta_engine, "signature", disk_full)
    messages = _stream(src, sigs, base)
    assert isinstance(messages[0], DeltaStart)
    end = messages[-1]
    assert isinstance(end, FileEnd) and end.hash == xxhash.xxh3_128(new).digest()
    assert not any(
        isinstance(m, FileAbort | FileStart) for m in messages
    )  # no abort, no whole resend


def test_the_new_version_of_a_delta_is_signed_for_the_next_one(tmp_path: Path) -> None:
    src, sigs, old, base = _source(tmp_path, 2 * 1024 * 1024)
    new = old[:1000] + b"changed" + old[1000:]
    (src / "f.bin").write_bytes(new)
    messages = _stream(src, sigs, base)
    assert isinstance(messages[0], DeltaStart)
    assert sigs.has("f.bin", xxhash.xxh3_128(new).digest()) and not sigs.has("f.bin", base)


def _parts(tmp: Path, count: int) -> tuple[list[bytes], bytes, bytes, Path]:
    """The deltas of `count` consecutive ranges of the new version (as a source computes them)."""
    delta, old, new, basis = _versions(tmp)
    bounds = [len(new) * i // count for i in range(count + 1)]
    deltas = []
    for i in range(count):
        out = tmp / f"part{i}"
        length = bounds[i + 1] - bounds[i] if i + 1 < count else -1
        delta_engine.delta(tmp / "sig", tmp / "new", out, start=bounds[i], length=length)
        deltas.append(out.read_bytes())
    return deltas, old, new, basis


def test_a_delta_in_parts_is_applied_part_after_part(tmp_path: Path) -> None:
    deltas, _, new, basis = _parts(tmp_path, 3)
    patch = _patch(tmp_path, basis, size=len(new), mode=0o644, mtime_ns=0, parts=3)
    for data in deltas:  # each part's chunks start again at offset 0
        for i in range(0, len(data), 100_000):
            patch.write(i, data[i : i + 100_000])
    out = patch.finish()
    out.finish(xxhash.xxh3_128(new).digest())
    assert out.temp.read_bytes() == new
    out.discard()


@pytest.mark.parametrize("announced", [1, 3])
def test_a_part_count_other_than_announced_is_refused(tmp_path: Path, announced: int) -> None:
    deltas, _, new, basis = _parts(tmp_path, 2)
    patch = _patch(tmp_path, basis, size=len(new), mode=0o644, mtime_ns=0, parts=announced)
    with pytest.raises(TransferError, match="parts"):
        for data in deltas:
            patch.write(0, data)
        patch.finish()
    patch.discard()
    assert not patch.temp.exists()


def test_a_large_file_goes_as_parallel_parts_and_arrives_whole(tmp_path: Path) -> None:
    from relaysync.protocol.messages import Checkpoint, Error
    from relaysync.transfer.receiver import ReceiverSession
    from relaysync.transfer.signatures import PARALLEL_MIN_BYTES
    from relaysync.transfer.target_folder import TargetFolder
    from relaysync.watch.manifest import Entry, Manifest

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    old = os.urandom(PARALLEL_MIN_BYTES + 4 * 1024 * 1024)
    (src / "f.bin").write_bytes(old)
    (dst / "f.bin").write_bytes(old)
    st = os.stat(dst / "f.bin")
    base = xxhash.xxh3_128(old).digest()
    folder = TargetFolder(
        mapping_id=1, source_node="s", root=dst, manifest=Manifest(tmp_path / "m.db"), durable=False
    )
    folder.manifest.put_many(
        [
            Entry(
                path="f.bin",
                kind="f",
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                mode=0o644,
                hash=base,
            )
        ]
    )
    sigs = SignatureStore(tmp_path / "sigs", parallel_parts=2)
    sigs.remember(src, "f.bin", base)
    new = bytearray(old)
    mid = len(new) // 2
    new[mid - 3000 : mid + 3000] = os.urandom(6000)  # an edit across the parts' boundary
    new[100:200] = os.urandom(100)
    (src / "f.bin").write_bytes(new)
    messages = [m for m in _stream(src, sigs, base) if not isinstance(m, Flush)]
    assert isinstance(messages[0], DeltaStart) and messages[0].parts == 2
    assert sum(len(m.data) for m in messages if isinstance(m, FileChunk)) < 100_000
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(
        [*messages, Checkpoint(seq=2)]
    )
    assert not any(isinstance(r, Error) for r in replies), replies
    assert (dst / "f.bin").read_bytes() == bytes(new)


def test_a_delta_that_fails_on_the_source_falls_back_to_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once DeltaStart is out, a failed build must not lose the change: FileAbort, then the file.

    The build fails only once DeltaStart is out (a corrupt signature fails at once, and then the
    file may go whole before any DeltaStart: both are right, but only this order tests the abort).
    """
    src, sigs, old, base = _source(tmp_path, 1024 * 1024)
    delta_start_out = threading.Event()

    def fails_midway(*args: object, **kwargs: object) -> None:
        delta_start_out.wait(30)
        raise delta_engine.SignatureError("given", "not a relaysync block signature (or truncated)")

    monkeypatch.setattr(delta_engine, "delta", fails_midway)
    (src / "f.bin").write_bytes(old[:-10] + b"0123456789")
    stream = iter_file_messages(
        src, "f.bin", 2, base_hash=base, options=SendOptions(signatures=sigs)
    )
    first = next(stream)
    assert isinstance(first, DeltaStart)
    delta_start_out.set()
    messages = [first, *(m for m in stream if not isinstance(m, Flush))]
    kinds = [type(m).__name__ for m in messages]
    assert "FileAbort" in kinds and kinds.count("DeltaStart") == 1
    assert isinstance(messages[kinds.index("FileAbort") + 1], FileStart)
    end = messages[-1]
    assert (
        isinstance(end, FileEnd)
        and end.hash == xxhash.xxh3_128((src / "f.bin").read_bytes()).digest()
    )


def _delta_update(tmp_path: Path) -> tuple[Path, object, list[object], bytes]:
    """A target holding v1 and the messages of a delta to v2 (source side in-process)."""
    from relaysync.protocol.messages import Checkpoint
    from relaysync.transfer.target_folder import TargetFolder
    from relaysync.watch.manifest import Entry, Manifest

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    old = os.urandom(2 * 1024 * 1024)
    for root in (src, dst):
        (root / "f.bin").write_bytes(old)
    st = os.stat(dst / "f.bin")
    base = xxhash.xxh3_128(old).digest()
    folder = TargetFolder(
        mapping_id=1, source_node="s", root=dst, manifest=Manifest(tmp_path / "m.db"), durable=False
    )
    folder.manifest.put_many(
        [
            Entry(
                path="f.bin",
                kind="f",
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                mode=0o644,
                hash=base,
            )
        ]
    )
    sigs = SignatureStore(tmp_path / "sigs")
    sigs.remember(src, "f.bin", base)
    (src / "f.bin").write_bytes(old[:1000] + b"edit" + old[1004:])
    messages = [m for m in _stream(src, sigs, base) if not isinstance(m, Flush)]
    assert isinstance(messages[0], DeltaStart)
    return dst, folder, [*messages, Checkpoint(seq=2)], old


def test_a_full_disk_while_patching_is_reported_as_such_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from relaysync.protocol.messages import Error, ErrorCode
    from relaysync.transfer import staging
    from relaysync.transfer.receiver import ReceiverSession

    dst, folder, messages, old = _delta_update(tmp_path)

    def full(self: staging.IncomingFile, data: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(staging.IncomingFile, "append", full)
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(messages)  # type: ignore[arg-type]
    assert [r.code for r in replies if isinstance(r, Error)] == [ErrorCode.DISK_FULL]
    assert (dst / "f.bin").read_bytes() == old
    assert [p.name for p in dst.iterdir()] == ["f.bin"]


def test_a_target_without_librsync_asks_for_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaysync.protocol.messages import Error, ErrorCode
    from relaysync.transfer.receiver import ReceiverSession

    dst, folder, messages, old = _delta_update(tmp_path)
    monkeypatch.setattr(_librsync, "available", lambda: False)
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(messages)  # type: ignore[arg-type]
    assert [r.code for r in replies if isinstance(r, Error)] == [ErrorCode.BASE_MISMATCH]
    assert (dst / "f.bin").read_bytes() == old


_FILL_AFTER = """
import errno, os, sys
from pathlib import Path
from relaysync.transfer import staging
from relaysync.transfer.patching import StreamingPatch

fail_at, tmp = int(sys.argv[1]), Path(sys.argv[2])
real = staging.IncomingFile.append
def append(self, data):
    if self.received + len(data) > fail_at:
        raise OSError(errno.ENOSPC, "No space left on device")
    real(self, data)
staging.IncomingFile.append = append
(tmp / "base").write_bytes(b"b" * 1000)
literal = os.urandom(4 << 20)
delta = b"rs\\x026" + bytes([0x43]) + len(literal).to_bytes(4, "big") + literal + b"\\0"  # one literal
patch = StreamingPatch(tmp / "base", base=os.open(tmp / "base", os.O_RDONLY), dir_fd=os.open(tmp, os.O_PATH), size=len(literal), mode=0o644, mtime_ns=0)
try:
    for off in range(0, len(delta), 1 << 20):
        patch.write(off, delta[off:off + (1 << 20)])
    patch.finish()
except OSError as exc:
    print("refused", errno.errorcode[exc.errno])
    patch.discard()
"""


@pytest.mark.parametrize("fail_at", [100_000, 1_000_000, 3_000_000])
def test_the_disk_filling_mid_delta_is_a_disk_full_error_not_a_crash(
    tmp_path: Path, fail_at: int
) -> None:
    """librsync writes the new version through a stdio FILE whose writer fails: it must tell
    glibc so in the way glibc expects (a negative count made the next fwrite read past its
    buffer: SIGSEGV, the whole agent gone). In a child process, as a crash would end pytest."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _FILL_AFTER, str(fail_at), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == "refused ENOSPC"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temp file left
