"""The source's signature store: librsync signatures of the last version of each large file sent.

When a file changes, the version its targets hold is the one the source sent last; the source
kept that version's signature, so it computes the delta itself, with no round trip to the
targets and once for all of them. Signatures and deltas live on disk in the source's state dir.

Resource handling: one signature per path (replaced when a newer version is signed); deltas are
kept while links may still need them and pruned by age.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import xxhash

from relaysync.transfer import _librsync

logger = logging.getLogger(__name__)

DELTA_MIN_BYTES = 64 * 1024  # below this a whole file costs less than signature + delta bookkeeping
DELTA_MAX_AGE_S = 600.0  # deltas older than this are pruned (links re-create them if needed)
_READ_BYTES = 1024 * 1024


def hash_path(path: Path) -> bytes:
    hasher = xxhash.xxh3_128()
    buf = bytearray(_READ_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            hasher.update(view[:n])
    return hasher.digest()


class SignatureStore:
    """Signatures keyed by (path, content hash) and deltas keyed by (path, base, new)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (directory / "sig").mkdir(parents=True, exist_ok=True)
        (directory / "delta").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @staticmethod
    def enabled() -> bool:
        return _librsync.available()

    def _key(self, path: str) -> str:
        return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:32]

    def _sig_path(self, path: str, content_hash: bytes) -> Path:
        return self.dir / "sig" / f"{self._key(path)}.{content_hash.hex()}.sig"

    def has(self, path: str, content_hash: bytes) -> bool:
        return self._sig_path(path, content_hash).exists()

    def remember(self, root: Path, path: str, content_hash: bytes) -> None:
        """Sign the file as it is now, if it still has `content_hash` (else a newer version follows)."""
        if not self.enabled() or self.has(path, content_hash):
            return
        full = root / path
        try:
            if full.stat().st_size < DELTA_MIN_BYTES:
                return
            sig = self._sig_path(path, content_hash)
            tmp = sig.with_suffix(f".{threading.get_ident()}.tmp")  # links may sign the same version at once
            _librsync.signature(full, tmp)
            if hash_path(full) != content_hash:
                tmp.unlink(missing_ok=True)
                return
        except OSError:
            return
        with self._lock:
            if sig.exists():  # another link signed this version meanwhile
                tmp.unlink(missing_ok=True)
                return
            for old in (self.dir / "sig").glob(f"{self._key(path)}.*.sig"):
                old.unlink(missing_ok=True)
            os.replace(tmp, sig)

    def delta(self, root: Path, path: str, base_hash: bytes) -> tuple[Path, bytes, os.stat_result] | None:
        """Return (delta file, hash of the new content, its stat) for the file now on disk.

        None if no signature of `base_hash` is kept or the file changed while it was read.
        """
        sig = self._sig_path(path, base_hash)
        full = root / path
        if not sig.exists():
            return None
        try:
            before = full.stat()
            new_hash = hash_path(full)
            out = self.dir / "delta" / f"{self._key(path)}.{base_hash.hex()}.{new_hash.hex()}.delta"
            if not out.exists():
                tmp = out.with_suffix(f".{threading.get_ident()}.tmp")
                _librsync.delta(sig, full, tmp)
                os.replace(tmp, out)
            after = full.stat()
        except OSError:
            return None
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            return None
        return out, new_hash, after

    def prune(self, max_age_s: float = DELTA_MAX_AGE_S) -> None:
        cutoff = time.time() - max_age_s
        for f in (self.dir / "delta").iterdir():
            try:
                if f.stat().st_mtime < cutoff:
                    f.unlink()
            except FileNotFoundError:
                pass
