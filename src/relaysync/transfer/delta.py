"""Delta ("different patch"): sign a version's blocks, and describe a newer version as copies of
those blocks plus literal bytes.

The search runs in the compiled `_blocksearch` module (rsync's algorithm with XXH3 strong
hashes; it measured 5-10x faster than librsync's, see bench/README.md) and writes librsync's
delta format, so the target applies it with librsync (`_librsync.patch`). Signatures are the
source's own: they never leave it.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

from relaysync._util.fs import open_regular
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
MAX_BLOCK_BYTES = (
    1024 * 1024
)  # the search's limit; files over 64 GiB get more than MAX_BLOCKS blocks
MAX_BLOCKS = 65536


class SignatureError(TransferError):
    """The signature {} is unusable: {}."""


def available() -> bool:
    """True if the block search was built (it needs gcc, python3-dev and libxxhash-dev)."""
    return _blocksearch is not None


def block_len_for(size: int) -> int:
    """The block length to sign a file of `size` bytes with: a power of two (so that it divides
    the sender's 1 MiB reads, see BlockSigner), at most MAX_BLOCKS blocks up to 64 GiB."""
    wanted = max(MIN_BLOCK_BYTES, -(-size // MAX_BLOCKS))
    return min(MAX_BLOCK_BYTES, 1 << (wanted - 1).bit_length())


_HEADER = struct.Struct("=8sIIQQ")  # as sig_header in _blocksearch.c
_MAGIC = b"RSYNSIG1"


class BlockSigner:
    """Signs a version block by block from the pieces a sender reads anyway to send it, so the
    signature of what was sent needs no second read of the file.

    Pieces must be consecutive; all but the last must be a multiple of the block length (the
    sender's 1 MiB reads are, since block lengths are powers of two). A piece that breaks this
    (a short read: the file changed) makes the signer unusable: `signature()` returns None.
    """

    def __init__(self, size: int) -> None:
        self.block_len = block_len_for(size)
        self._weak = bytearray()
        self._strong = bytearray()
        self._size = 0
        self._ended = False  # a short piece was seen: only the end may follow
        self._broken = _blocksearch is None

    def update(self, piece: bytes) -> None:
        if self._broken or not piece:
            return
        if self._ended:
            self._broken = True
            return
        weak, strong = _blocksearch.block_sums(piece, self.block_len)
        self._weak += weak
        self._strong += strong
        self._size += len(piece)
        self._ended = len(piece) % self.block_len != 0

    def signature(self) -> bytes | None:
        """The signature file's bytes, or None if the pieces did not make a signable whole."""
        if self._broken:
            return None
        count = len(self._weak) // 4
        tail = self._size - (count - 1) * self.block_len if count else 0
        return (
            _HEADER.pack(_MAGIC, self.block_len, tail, self._size, count)
            + self._weak
            + self._strong
        )


def _open_input(source: Path | int) -> tuple[int, bool]:
    """(fd, whether we opened it): an int is the caller's open fd; a path is opened only if it
    is a regular file (not through a final symlink, never blocking on a FIFO)."""
    if isinstance(source, int):
        return source, False
    opened = open_regular(source)
    if opened is None:
        raise OSError(errno.EINVAL, "gone or not a regular file", str(source))
    return opened[0], True


def signature(basis: Path | int, sig_out: Path) -> bytes:
    """Write the signature of `basis` (rolling weak sum + strong hash per block) to sig_out;
    return the content hash (xxh3-128, as `scanner.hash_file`) of the version signed, from the
    same read.

    Args:
        basis: an fd open on the version (read with pread, left open), or a path, which must be
            a regular file.
        sig_out: where the signature is written.

    Raises:
        OSError: `basis` cannot be read (a path that is not a regular file: EINVAL), or sig_out
            cannot be written.
        SignatureError: the block search is not built.
    """
    if _blocksearch is None:
        raise SignatureError(str(sig_out), "the block search is not built (run scripts/install)")
    fd_in, owned = _open_input(basis)
    try:
        block_len = block_len_for(os.fstat(fd_in).st_size)
        fd_out = os.open(sig_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _size, digest = _blocksearch.sign(fd_in, fd_out, block_len)
            return digest
        finally:
            os.close(fd_out)
    finally:
        if owned:
            os.close(fd_in)


def delta(
    sig: Path | bytes, new: Path | int, delta_out: Path, *, start: int = 0, length: int = -1
) -> tuple[int, int]:
    """Write the delta (copy/literal instructions) that turns the signed basis into `new`;
    return (literal bytes, copied bytes). `sig` is a signature file or its bytes; `new` an fd
    open on the new version (read with pread, left open) or a path, which must be a regular file.

    With `start`/`length`, only that part of `new` (to its end for length -1) is described: the
    deltas of consecutive parts, applied one after the other, rebuild the whole file, so parts
    can be computed on several cores at once. The delta file grows in pieces of 256 KiB while
    the search runs, so readers can follow it.
    """
    if _blocksearch is None:
        raise SignatureError(str(sig), "the block search is not built (run scripts/install)")
    sums = sig if isinstance(sig, bytes) else sig.read_bytes()
    fd_in, owned = _open_input(new)
    try:
        # No O_TRUNC on the empty part a build creates first: on ext4 a file truncated to 0 is
        # written back whole when it is closed (auto_da_alloc), and the build waits for that.
        fd_out = os.open(delta_out, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd_out).st_size:
                os.ftruncate(fd_out, 0)
            try:
                literal, copied, _misses = _blocksearch.delta(sums, fd_in, start, length, fd_out)
            except ValueError as exc:
                raise SignatureError(
                    "given" if isinstance(sig, bytes) else str(sig), str(exc)
                ) from exc
        finally:
            os.close(fd_out)
    finally:
        if owned:
            os.close(fd_in)
    return int(literal), int(copied)
