"""A small file sent whole in one `SmallFile` message, and the checked pread of a source's file.

The file is read with one pread (one byte more shows that it grew), or taken as the source read
it to hash (watch/content_cache.py); it is signed for the next change's delta as it goes. Moved
out of transfer/ops.py, whose whole-file sends read through `_pread` too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from relaysync.errors import SourceReadError
from relaysync.protocol.messages import FileAbort, SmallFile
from relaysync.transfer.codec import encode_chunk
from relaysync.watch.content_cache import Kept
from relaysync.watch.manifest import mtime_ns_of, permission_bits

if TYPE_CHECKING:
    from relaysync.transfer.ops import SendOptions


def _pread(fd: int, size: int, offset: int, path: str) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:  # EIO on a bad sector: the file is there, it is retried
        raise SourceReadError.of(path, exc) from exc


def _small_file(
    root: Path,
    fd: int,
    before: os.stat_result,
    path: str,
    seq: int,
    base_hash: bytes,
    expected_hash: bytes,
    options: SendOptions,
    changed_at: float,
) -> SmallFile | FileAbort:
    """The whole file in one message (read with one pread), or FileAbort if it changed meanwhile."""
    data = _pread(fd, before.st_size + 1, 0, path)  # one byte more shows a file that grew
    after = os.fstat(fd)
    if len(data) != before.st_size or (after.st_size, after.st_mtime_ns) != (
        before.st_size,
        before.st_mtime_ns,
    ):
        return FileAbort(seq=seq, reason="changed while read")
    kept = Kept(
        xxhash.xxh3_128_digest(data), data, permission_bits(before.st_mode), mtime_ns_of(before)
    )
    return _small_message(root, path, seq, base_hash, expected_hash, kept, options, changed_at)


def _small_message(
    root: Path,
    path: str,
    seq: int,
    base_hash: bytes,
    expected_hash: bytes,
    content: Kept,
    options: SendOptions,
    changed_at: float,
) -> SmallFile:
    """The SmallFile of `content`, signed for the next change's delta as it goes."""
    data, digest, size = content.data, content.digest, len(content.data)
    if options.signatures is not None:
        signer = options.signatures.signer_for(path, expected_hash, size)
        try:
            if signer is not None:
                signer.update(data)
            options.signatures.sent_whole(root, path, digest, size, signer)
        finally:
            if signer is not None:
                options.signatures.release(path, expected_hash)
    codec_id, payload = encode_chunk(data, options.codec)
    return SmallFile(
        seq=seq,
        path=path,
        size=size,
        mode=content.mode,
        mtime_ns=content.mtime_ns,
        data=payload,
        hash=digest,
        codec=codec_id,
        base_hash=base_hash,
        changed_at=changed_at,
    )
