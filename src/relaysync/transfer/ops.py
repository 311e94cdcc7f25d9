"""Turning source-side changes into wire ops: journal records and tree differences to messages.

Runs in worker threads (it reads files). Small files are read whole; a file larger than
CHUNK_BYTES is streamed by `iter_file_messages` so memory stays flat in the file size. A file
that changes while it is read is sent as FileAbort: the newer version has its own journal record.
One there but unreadable (EACCES, EMFILE, EIO) raises SourceReadError (transfer/unreadable.py).
A small file goes in one message (transfer/_small_file_messages.py).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import xxhash

from relaysync._util.fs import open_regular_in
from relaysync.constants import CHUNK_BYTES, SMALL_FILE_BYTES
from relaysync.errors import SourceReadError
from relaysync.protocol.messages import (
    AnyMessage,
    Delete,
    DeltaStart,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    Rename,
    SetAttr,
    SmallFile,
    Symlink,
)
from relaysync.transfer._small_file_messages import _pread, _small_file, _small_message
from relaysync.transfer.bandwidth import TokenBucket
from relaysync.transfer.builds import DeltaBuild, version_of
from relaysync.transfer.codec import Codec, Plain, encode_chunk
from relaysync.transfer.signatures import SignatureStore
from relaysync.watch.changes import JournalRecord
from relaysync.watch.content_cache import MappingContent
from relaysync.watch.manifest import Entry, mtime_ns_of, permission_bits


@dataclass
class SendOptions:
    """How one link sends file data: its codec, and whether (and from where) deltas come."""

    codec: Codec = field(default_factory=Plain)
    signatures: SignatureStore | None = None  # None: whole files only
    # the target lacked the delta's base (or a rename's file): whole next time; dropped once acked
    whole_file_seqs: set[int] = field(default_factory=set)
    force: str = "auto"  # "auto" | "delta" | "whole"
    resume: dict[tuple[str, bytes], int] = field(default_factory=dict)  # (path, hash) -> bytes held
    bandwidth: TokenBucket = field(default_factory=lambda: TokenBucket(0))
    tls: bool = (
        True  # False: a plain link the operator marked trusted, authenticated by link_secret
    )
    small_files: bool = False  # the peer takes SmallFile: set from its Hello (an older release: no)
    # the source's small files as read to hash (watch/content_cache.py): sent without a read
    content: MappingContent | None = None
    link_secret: bytes = b""
    # Test hook (RELAYSYNC_TEST_CORRUPT_DELTAS in the source agent's environment): flip one bit
    # in the first chunk of this many deltas, to show a corrupt delta is never committed.
    corrupt_deltas: int = 0


def _chunk(seq: int, offset: int, data: bytes, options: SendOptions) -> FileChunk:
    codec_id, payload = encode_chunk(data, options.codec)
    return FileChunk(seq=seq, offset=offset, data=payload, codec=codec_id)


class Flush:
    """Yielded between messages when the next one is not ready yet (a delta still being
    computed): the sender puts what it holds on the wire instead of waiting to fill a batch."""


FLUSH = Flush()
Outgoing = AnyMessage | Flush
_DELTA_POLL_S = 0.002  # how often a link following a growing delta looks for more
_DELTA_MIN_CHUNK = 256 * 1024  # while a delta grows, what is sent at once at least


def iter_file_messages(
    root: Path,
    path: str,
    seq: int,
    *,
    base_hash: bytes = b"",
    expected_hash: bytes = b"",
    options: SendOptions | None = None,
    changed_at: float = 0.0,
) -> Iterator[Outgoing]:
    """Yield FileStart, FileChunk..., FileEnd (or FileAbort) for the file as it is now on disk.

    With a known base version and a kept signature of it, yield a DeltaStart and the delta
    instead, streamed while librsync computes it. Yields nothing if the file is gone or is no
    longer a regular file (a later record covers it): either way the file is opened once,
    without following a symlink or blocking on a FIFO, and only that open file is read.
    `changed_at` (when the source journaled the change) rides on the start message.

    Raises:
        SourceReadError: the file is there but cannot be opened or read; what was yielded of it
            already (a FileStart, chunks) is to be ended with a FileAbort.
    """
    options = options or SendOptions()
    if (
        _wants_delta(path, base_hash, seq, options)
        and not _resume_sends_less(root, path, expected_hash, options)
        and (
            yield from _delta_if_kept(
                root, path, seq, base_hash, expected_hash, options, changed_at
            )
        )
    ):
        return
    yield from _whole_messages(root, path, seq, base_hash, expected_hash, options, changed_at)


def _wants_delta(path: str, base_hash: bytes, seq: int, options: SendOptions) -> bool:
    if (
        not base_hash
        or options.signatures is None
        or options.force == "whole"
        or seq in options.whole_file_seqs
    ):
        return False
    return options.force == "delta" or options.signatures.delta_pays(path)


def _resume_sends_less(root: Path, path: str, expected_hash: bytes, options: SendOptions) -> bool:
    """Whether the target's partial of this version (a whole copy's, or a delta's patched output:
    a prefix of the version either way) is best resumed whole from its last whole chunk rather
    than replaced by a delta: yes unless the file's last delta (most often this very version's,
    computed for the attempt that was cut) was smaller than the rest."""
    held = options.resume.get((path, expected_hash), 0) if expected_hash else 0
    if held < CHUNK_BYTES:
        return False
    ratio = options.signatures.delta_ratio(path) if options.signatures is not None else None
    if ratio is None:
        return True
    try:
        size = os.stat(f"{root}/{path}", follow_symlinks=False).st_size
    except OSError:
        return True  # gone: _whole_messages sends nothing
    return ratio * size >= size - held


def _delta_if_kept(
    root: Path,
    path: str,
    seq: int,
    base_hash: bytes,
    expected_hash: bytes,
    options: SendOptions,
    changed_at: float,
) -> Generator[Outgoing, None, bool]:
    """The delta of the file from `base_hash`, if that version's signature is kept. Returns
    False if the file must go whole instead (nothing was yielded), True if the record is dealt
    with (the delta went, or the path is not a regular file any more: nothing to send)."""
    assert options.signatures is not None
    opened = open_source(root, path)
    if opened is None:
        return True
    try:
        build = options.signatures.start_delta(root, path, base_hash, opened)
        files = options.signatures.open_parts(build) if build is not None else None
        if build is None or files is None:
            return False
        try:
            yield from _delta_messages(
                root,
                path,
                seq,
                base_hash,
                expected_hash,
                opened[0],
                build,
                files,
                options,
                changed_at,
            )
        finally:
            for f in files:
                f.close()
        return True
    finally:
        os.close(opened[0])


def _delta_messages(
    root: Path,
    path: str,
    seq: int,
    base_hash: bytes,
    expected_hash: bytes,
    fd: int,
    build: DeltaBuild,
    files: list[BinaryIO],
    options: SendOptions,
    changed_at: float = 0.0,
) -> Iterator[Outgoing]:
    """DeltaStart, the delta streamed chunk by chunk as the search writes it, FileEnd.

    The build signs the new version (once for every link) as it computes the delta, which
    gives its hash; a file that changed meanwhile ends in FileAbort (its newer version has its
    own record). `fd` is open on the version the build reads, `files` on its parts.
    `expected_hash`, the version's hash as journaled (known before the delta is), names the
    target's partial; FileEnd's hash is what the target checks.
    """
    st = build.stat
    yield DeltaStart(
        seq=seq,
        path=path,
        size=st.st_size,
        mode=permission_bits(st.st_mode),
        mtime_ns=mtime_ns_of(st),
        base_hash=base_hash,
        changed_at=changed_at,
        parts=len(build.parts),
        expected_hash=expected_hash,
    )
    for part, f in zip(
        build.parts, files, strict=True
    ):  # each part's chunks start again at offset 0
        offset = 0
        pending = bytearray()
        while True:
            done = part.done.is_set()  # read before the file: what it wrote by then is there
            step = options.bandwidth.chunk_bytes(
                CHUNK_BYTES
            )  # smaller under a limit, as whole files
            pending += f.read(max(0, step - len(pending)))
            # while the search runs, only sizeable chunks go (each chunk costs a frame and
            # a TLS record), and the rest once it is done.
            if len(pending) >= (step if done else min(step, _DELTA_MIN_CHUNK)) or (
                done and pending
            ):
                if offset == 0 and options.corrupt_deltas > 0:
                    options.corrupt_deltas -= 1
                    pending[len(pending) // 2] ^= 0x10
                # more than `step` only if a limit started (or got lower) while it was read
                pieces = (
                    [bytes(pending)]
                    if len(pending) <= step
                    else [bytes(pending[i : i + step]) for i in range(0, len(pending), step)]
                )
                for piece in pieces:
                    yield _chunk(seq, offset, piece, options)
                    offset += len(piece)
                pending.clear()
            elif done:
                break
            else:
                yield FLUSH
                part.done.wait(_DELTA_POLL_S)
        if not part.ok:
            break
    build.done.wait()
    new_hash = build.new_hash
    if not build.ok or new_hash is None:
        yield FileAbort(seq=seq, reason="delta failed or the file changed while read")
        if _unchanged(fd, build.stat):  # the delta failed, not the file: send it whole
            yield from _whole_messages(root, path, seq, base_hash, b"", options, changed_at)
        return
    yield FileEnd(seq=seq, hash=new_hash)


def _unchanged(fd: int, st: os.stat_result) -> bool:
    try:
        return version_of(os.fstat(fd)) == version_of(st)
    except OSError:
        return False


def _whole_messages(
    root: Path,
    path: str,
    seq: int,
    base_hash: bytes,
    expected_hash: bytes,
    options: SendOptions,
    changed_at: float = 0.0,
) -> Iterator[Outgoing]:
    if options.small_files and expected_hash and options.content is not None:
        kept = options.content.take(path, expected_hash)
        if kept is not None:  # the journaled version itself, as read to hash it
            yield _small_message(
                root, path, seq, base_hash, expected_hash, kept, options, changed_at
            )
            return
    opened = open_source(root, path)
    if opened is None:  # gone, or no longer a regular file: a later record covers it
        return
    fd, before = opened
    signer = None
    try:
        held = options.resume.pop((path, expected_hash), 0) if expected_hash else 0
        held = held if held <= before.st_size and held % CHUNK_BYTES == 0 else 0
        if before.st_size <= SMALL_FILE_BYTES and not held and options.small_files:
            yield _small_file(
                root, fd, before, path, seq, base_hash, expected_hash, options, changed_at
            )
            return
        yield FileStart(
            seq=seq,
            path=path,
            size=before.st_size,
            mode=permission_bits(before.st_mode),
            mtime_ns=mtime_ns_of(before),
            base_hash=base_hash,
            expected_hash=expected_hash,
            offset=held,
            changed_at=changed_at,
        )
        hasher = xxhash.xxh3_128()
        # what is read to be sent is signed too, for the next change's delta (no second read)
        signer = (
            options.signatures.signer_for(path, expected_hash, before.st_size)
            if options.signatures is not None
            else None
        )
        offset = 0
        while offset < before.st_size:
            # Under a limit, smaller messages; asked per message, as a window may start mid-file.
            # Each read ends on a multiple of its size (a power of two dividing CHUNK_BYTES), so a
            # resume point, a whole number of CHUNK_BYTES, is always a message boundary.
            step = options.bandwidth.chunk_bytes(CHUNK_BYTES)
            data = _pread(fd, min(step - offset % step, before.st_size - offset), offset, path)
            if not data:
                break
            hasher.update(data)  # the target's kept prefix is covered by the whole-file hash too
            if signer is not None:
                signer.update(data)
            if offset >= held:
                yield _chunk(seq, offset, data, options)
            offset += len(data)
        after = os.fstat(fd)
        if offset != before.st_size or (after.st_size, after.st_mtime_ns) != (
            before.st_size,
            before.st_mtime_ns,
        ):
            yield FileAbort(seq=seq, reason="changed while read")
            return
        digest = hasher.digest()
        if options.signatures is not None:
            options.signatures.sent_whole(root, path, digest, before.st_size, signer)
        yield FileEnd(seq=seq, hash=digest)
    finally:
        os.close(fd)
        if signer is not None and options.signatures is not None:
            options.signatures.release(path, expected_hash)


def open_source(root: Path, path: str) -> tuple[int, os.stat_result] | None:
    """`open_regular_in`; SourceReadError if the file is there but cannot be opened."""
    try:
        return open_regular_in(root, path)
    except OSError as exc:
        raise SourceReadError.of(path, exc) from exc


def record_messages(
    root: Path, record: JournalRecord, options: SendOptions | None = None
) -> Iterator[Outgoing]:
    """Yield the wire ops for one journal record, each carrying when the record was journaled."""
    entry = record.entry
    at = record.time_ns / 1e9  # 0 for records of journals written before times were kept
    match record.op:
        case "write":
            yield from iter_file_messages(
                root,
                record.path,
                record.seq,
                base_hash=record.base_hash,
                expected_hash=entry.hash if entry else b"",
                options=options,
                changed_at=at,
            )
        case "delete":
            yield Delete(seq=record.seq, path=record.path, changed_at=at)
        case "mkdir":
            yield MakeDir(
                seq=record.seq, path=record.path, mode=entry.mode if entry else 0o755, changed_at=at
            )
        case "symlink":
            target = entry.link_target if entry else os.readlink(root / record.path)
            yield Symlink(seq=record.seq, path=record.path, target=target, changed_at=at)
        case "rename":
            if (
                options is not None
                and record.seq in options.whole_file_seqs
                and entry is not None
                and entry.kind == "f"
            ):  # the target lacked the file to rename: the result whole
                yield from iter_file_messages(
                    root,
                    record.new_path,
                    record.seq,
                    base_hash=record.base_hash,
                    expected_hash=entry.hash,
                    options=options,
                    changed_at=at,
                )
                return
            yield Rename(
                seq=record.seq,
                path=record.path,
                new_path=record.new_path,
                hash=entry.hash if entry and entry.kind == "f" else b"",
                changed_at=at,
            )
        case "attr":
            if entry is not None:
                yield SetAttr(
                    seq=record.seq,
                    path=record.path,
                    mode=entry.mode,
                    mtime_ns=entry.mtime_ns,
                    changed_at=at,
                )


def entry_messages(
    root: Path, entry: Entry, options: SendOptions | None = None
) -> Iterator[Outgoing]:
    """Yield the ops that create `entry` on a target (catch-up work, seq 0)."""
    match entry.kind:
        case "f":
            yield from iter_file_messages(
                root, entry.path, 0, expected_hash=entry.hash, options=options
            )
        case "d":
            yield MakeDir(seq=0, path=entry.path, mode=entry.mode or 0o755)
        case "l":
            try:  # entries rebuilt from a directory listing carry no link target
                target = entry.link_target or os.readlink(root / entry.path)
            except OSError:
                return  # gone meanwhile: a later record covers it
            yield Symlink(seq=0, path=entry.path, target=target)


def message_bytes(message: Outgoing) -> int:
    """Approximate payload size, for batching by bytes."""
    return len(message.data) + 64 if isinstance(message, FileChunk | SmallFile) else 64
