"""The delta path reads only regular files inside the root, as the whole-file path does: a path
that became a symlink (out of the root, or to /dev/zero) or a FIFO after its write was journaled
yields nothing (a later record covers it), and never hangs or reads without end."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import xxhash

from relaysync.protocol.messages import Checkpoint
from relaysync.transfer.ops import Flush, Outgoing, SendOptions, iter_file_messages
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.signatures import SignatureStore
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Entry, Manifest

BOUND_S = 10.0  # a sender thread still busy after this is hung (the real work takes milliseconds)


def _setup(tmp: Path) -> tuple[Path, Path, TargetFolder, SignatureStore, bytes]:
    """Source and target both holding f.bin (1 MiB), the source keeping its signature."""
    src, dst = tmp / "src", tmp / "dst"
    src.mkdir()
    dst.mkdir()
    old = os.urandom(1024 * 1024)
    for root in (src, dst):
        (root / "f.bin").write_bytes(old)
    st = os.stat(dst / "f.bin")
    base = xxhash.xxh3_128(old).digest()
    folder = TargetFolder(
        mapping_id=1, source_node="s", root=dst, manifest=Manifest(tmp / "m.db"), durable=False
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
    sigs = SignatureStore(tmp / "sigs")
    sigs.remember(src, "f.bin", base)  # as after that version was sent
    assert sigs.has("f.bin", base)
    return src, dst, folder, sigs, base


def _send_bounded(src: Path, sigs: SignatureStore, base: bytes) -> list[Outgoing]:
    """The messages for "write f.bin" (a delta wanted), from a thread given BOUND_S to finish."""
    out: list[Outgoing] = []

    def send() -> None:
        options = SendOptions(signatures=sigs, force="delta")
        for message in iter_file_messages(src, "f.bin", 2, base_hash=base, options=options):
            out.append(message)
            if len(out) > 10_000:  # an endless delta: stop reading, the assertion below reports it
                return

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), (
        f"the sender is still busy after {BOUND_S} s: {[type(m).__name__ for m in out[:5]]}"
    )
    return [m for m in out if not isinstance(m, Flush)]


def test_a_path_replaced_by_a_symlink_out_of_the_root_ships_nothing(tmp_path: Path) -> None:
    src, dst, folder, sigs, base = _setup(tmp_path)
    secret = os.urandom(1024 * 1024)
    (tmp_path / "outside-secret.bin").write_bytes(secret)  # not under the mapped root
    (src / "f.bin").unlink()
    (src / "f.bin").symlink_to(tmp_path / "outside-secret.bin")  # "write f.bin" is still queued

    messages = _send_bounded(src, sigs, base)
    assert messages == [], [type(m).__name__ for m in messages]
    ReceiverSession(folder, "j", lambda *_: None).apply_batch([*messages, Checkpoint(seq=2)])
    assert (dst / "f.bin").read_bytes() != secret
    assert not sigs.has("f.bin", xxhash.xxh3_128(secret).digest())  # nor signed


def test_a_path_replaced_by_a_fifo_does_not_block_the_sender(tmp_path: Path) -> None:
    src, _dst, _folder, sigs, base = _setup(tmp_path)
    (src / "f.bin").unlink()
    os.mkfifo(src / "f.bin")
    try:
        assert _send_bounded(src, sigs, base) == []
    finally:
        for _ in range(8):  # on failure, let blocked opens of the FIFO go
            try:
                os.close(os.open(src / "f.bin", os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                break


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_symlink_to_an_endless_device_builds_no_delta(tmp_path: Path) -> None:
    src, _dst, _folder, sigs, base = _setup(tmp_path)
    (src / "f.bin").unlink()
    (src / "f.bin").symlink_to("/dev/zero")
    assert _send_bounded(src, sigs, base) == []
    assert list((tmp_path / "sigs" / "delta").iterdir()) == []  # no build was started


def test_the_store_refuses_to_sign_or_diff_anything_but_a_regular_file(tmp_path: Path) -> None:
    """`remember` and `start_delta` called with a path (no open file) check it the same way."""
    src, _dst, _folder, sigs, base = _setup(tmp_path)
    outside = os.urandom(256 * 1024)
    (tmp_path / "outside.bin").write_bytes(outside)
    (src / "f.bin").unlink()
    (src / "f.bin").symlink_to(tmp_path / "outside.bin")
    sigs.remember(src, "f.bin", xxhash.xxh3_128(outside).digest())
    assert not sigs.has("f.bin", xxhash.xxh3_128(outside).digest())
    assert sigs.start_delta(src, "f.bin", base) is None


def test_the_whole_file_path_does_not_block_on_a_fifo_either(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "f.bin")
    out: list[Outgoing] = []
    thread = threading.Thread(
        target=lambda: out.extend(iter_file_messages(src, "f.bin", 1)), daemon=True
    )
    thread.start()
    thread.join(BOUND_S)
    try:
        assert not thread.is_alive(), "the whole-file path is blocked opening a FIFO"
        assert out == []
    finally:
        for _ in range(8):
            try:
                os.close(os.open(src / "f.bin", os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                break


@pytest.mark.parametrize("delta", [False, True])
def test_a_directory_on_the_way_replaced_by_a_symlink_out_of_the_root_ships_nothing(
    tmp_path: Path, delta: bool
) -> None:
    """The file is at d/f.bin when its write is journaled; then `d` becomes a symlink to a
    directory outside the folder holding an f.bin: nothing may be read through it."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "d").mkdir(parents=True)
    outside.mkdir()
    old = os.urandom(256 * 1024)
    (src / "d" / "f.bin").write_bytes(old)
    base = xxhash.xxh3_128(old).digest()
    sigs = SignatureStore(tmp_path / "sigs")
    sigs.remember(src, "d/f.bin", base)
    (outside / "f.bin").write_bytes(b"secret outside the source folder\n" * 8192)
    (src / "d" / "f.bin").unlink()
    (src / "d").rmdir()
    (src / "d").symlink_to(outside)
    options = SendOptions(signatures=sigs, small_files=True, force="delta" if delta else "whole")
    sent = [
        m
        for m in iter_file_messages(
            src, "d/f.bin", 1, base_hash=base if delta else b"", options=options
        )
        if not isinstance(m, Flush)
    ]
    assert sent == []
