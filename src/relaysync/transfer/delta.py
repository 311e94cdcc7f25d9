"""Delta ("different patch"): sign a version's blocks, and describe a newer version as copies of
those blocks plus literal bytes.

The search runs in the compiled `_blocksearch` module (rsync's algorithm with XXH3 strong
hashes; it measured 5-10x faster than librsync's, see bench/README.md) and writes librsync's
delta format, so the target applies it with librsync (`_librsync.patch`). Signatures are the
source's own: they never leave it.
"""

from __future__ import annotations

import os
from pathlib import Path

from relaysync.errors import TransferError

try:
    from relaysync.transfer import _blocksearch
except ImportError:  # not built (no compiler at install time): deltas are off, whole files go
    _blocksearch = None  # type: ignore[assignment]

# Signatures stay on the source, so a small block costs no bytes on the wire, only memory for
# the search's table: blocks far smaller than rsync's sqrt(size) default find many more matches
# in edited text (1 % of the lines of 100 MiB: 26 MB of literal data at 2 KiB blocks, 78 MB at
# 10 KiB), and MAX_BLOCKS bounds the table (a few MB) for large files.
MIN_BLOCK_BYTES = 2048
MAX_BLOCK_BYTES = 1024 * 1024  # the search's limit; files over 64 GiB get more than MAX_BLOCKS blocks
MAX_BLOCKS = 65536


class SignatureError(TransferError):
    """The signature {} is unusable: {}."""


def available() -> bool:
    """True if the block search was built (it needs gcc, python3-dev and libxxhash-dev)."""
    return _blocksearch is not None


def block_len_for(size: int) -> int:
    """The block length to sign a file of `size` bytes with."""
    return min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, -(-size // MAX_BLOCKS // 1024) * 1024))


def signature(basis: Path, sig_out: Path) -> bytes:
    """Write the signature of `basis` (rolling weak sum + strong hash per block) to sig_out;
    return the content hash (xxh3-128, as `scanner.hash_file`) of the version signed, from the
    same read."""
    if _blocksearch is None:
        raise SignatureError(str(sig_out), "the block search is not built (run scripts/install)")
    fd_in = os.open(basis, os.O_RDONLY | os.O_CLOEXEC)
    try:
        block_len = block_len_for(os.fstat(fd_in).st_size)
        fd_out = os.open(sig_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _size, digest = _blocksearch.sign(fd_in, fd_out, block_len)
            return digest
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def delta(sig: Path, new: Path, delta_out: Path, *, start: int = 0, length: int = -1) -> tuple[int, int]:
    """Write the delta (copy/literal instructions) that turns the signed basis into `new`;
    return (literal bytes, copied bytes).

    With `start`/`length`, only that part of `new` (to its end for length -1) is described: the
    deltas of consecutive parts, applied one after the other, rebuild the whole file, so parts
    can be computed on several cores at once. The delta file grows in pieces of 256 KiB while
    the search runs, so readers can follow it.
    """
    if _blocksearch is None:
        raise SignatureError(str(sig), "the block search is not built (run scripts/install)")
    sums = sig.read_bytes()
    fd_in = os.open(new, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd_out = os.open(delta_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                literal, copied = _blocksearch.delta(sums, fd_in, start, length, fd_out)
            except ValueError as exc:
                raise SignatureError(str(sig), str(exc)) from exc
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    return int(literal), int(copied)
