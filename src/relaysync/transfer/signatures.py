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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from relaysync.transfer import _librsync

logger = logging.getLogger(__name__)

DELTA_MIN_BYTES = 64 * 1024  # below this a whole file costs less than signature + delta bookkeeping
DELTA_MAX_AGE_S = 600.0  # deltas older than this are pruned (links re-create them if needed)
SIGNER_NICE = 19  # the signing thread yields the CPU to transfers
SIGN_WAIT_S = 10.0  # a delta waits this long for its base's signature, then the whole file goes
DELTA_MAX_RATIO = 0.9  # "auto": after a delta this large relative to its file, send that file whole
_READ_BYTES = 1024 * 1024


def hash_path(path: Path) -> bytes:
    hasher = xxhash.xxh3_128()
    buf = bytearray(_READ_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            hasher.update(view[:n])
    return hasher.digest()


@dataclass
class DeltaBuild:
    """A delta being written by librsync in a thread; readers follow the file as it grows."""

    path: Path
    stat: os.stat_result  # of the new version when the build started
    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False  # set before `done`: the delta is complete and the file did not change meanwhile


class SignatureStore:
    """Signatures keyed by (path, content hash) and deltas keyed by (path, base, new)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        (directory / "sig").mkdir(parents=True, exist_ok=True)
        (directory / "delta").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._builds: dict[Path, DeltaBuild] = {}  # delta file -> its build (running or done)
        self._ratios: dict[str, float] = {}  # path -> size of its last delta / size of the file
        self._queue: deque[tuple[Path, str, bytes]] = deque()  # versions sent, to sign
        self._signing: dict[tuple[str, bytes], threading.Event] = {}  # queued or being signed
        self._signer_running = False

    def sign_later(self, root: Path, path: str, content_hash: bytes) -> None:
        """Queue a version just sent for signing in a background thread of low CPU priority.

        Signing reads the whole file (about 400 MB/s); at nice 19 it takes only what transfers
        leave idle. A delta that needs a signature still in the queue waits for it (`start_delta`).
        """
        key = (path, content_hash)
        with self._lock:
            if key in self._signing:
                return
            self._signing[key] = threading.Event()
            self._queue.append((root, path, content_hash))
            if self._signer_running:
                return
            self._signer_running = True
        threading.Thread(target=self._sign_queued, name="signer", daemon=True).start()

    def _sign_queued(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SIGNER_NICE)
        except OSError:
            pass
        while True:
            with self._lock:
                if not self._queue:
                    self._signer_running = False
                    return
                root, path, content_hash = self._queue.popleft()
            try:
                self.remember(root, path, content_hash)
            except (OSError, _librsync.LibrsyncError) as exc:  # only the next delta is lost
                logger.warning("could not sign %s for the next delta: %s", path, exc)
            finally:
                with self._lock:
                    done = self._signing.pop((path, content_hash), None)
                if done is not None:
                    done.set()

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

    def start_delta(self, root: Path, path: str, base_hash: bytes) -> DeltaBuild | None:
        """Start (or join) computing the delta from the signed `base_hash` version to the file now.

        The delta file grows while librsync writes it, so links stream it as it is produced; a
        build for the same (base, file as it is now) is shared by every link that asks.
        None if no signature of `base_hash` is kept or the file is gone.
        """
        sig = self._sig_path(path, base_hash)
        full = root / path
        signing = self._signing.get((path, base_hash))
        if signing is not None:  # the base was sent a moment ago and is still being signed
            signing.wait(SIGN_WAIT_S)
        try:
            if not sig.exists():
                return None
            st = full.stat()
        except OSError:
            return None
        version = f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"
        out = self.dir / "delta" / f"{self._key(path)}.{base_hash.hex()}.{version}.delta"
        with self._lock:
            build = self._builds.get(out)
            if build is not None and (not build.done.is_set() or out.exists()):
                return build
            try:
                out.write_bytes(b"")  # readers may open it before librsync does
            except OSError as exc:  # a full state disk: the whole file goes instead
                logger.warning("cannot start a delta of %s: %s", path, exc)
                return None
            build = DeltaBuild(path=out, stat=st)
            self._builds[out] = build
        threading.Thread(target=self._build, args=(build, sig, full, path), name=f"delta {path[-40:]}",
                         daemon=True).start()
        return build

    def _build(self, build: DeltaBuild, sig: Path, full: Path, path: str) -> None:
        try:
            _librsync.delta(sig, full, build.path)
            after = full.stat()
            build.ok = (after.st_size, after.st_mtime_ns, after.st_ino) == (
                build.stat.st_size, build.stat.st_mtime_ns, build.stat.st_ino)
            if build.ok and build.stat.st_size:
                self._ratios[path] = build.path.stat().st_size / build.stat.st_size
        except (OSError, _librsync.LibrsyncError) as exc:
            logger.warning("delta of %s failed, the whole file goes instead: %s", path, exc)
        finally:
            build.done.set()
            if not build.ok:
                with self._lock:
                    self._builds.pop(build.path, None)

    def delta_pays(self, path: str) -> bool:
        """False when the last delta of this file saved almost nothing (a whole copy is simpler)."""
        return self._ratios.get(path, 0.0) <= DELTA_MAX_RATIO

    def prune(self, max_age_s: float = DELTA_MAX_AGE_S) -> None:
        cutoff = time.time() - max_age_s
        for f in (self.dir / "delta").iterdir():
            try:
                if f.stat().st_mtime < cutoff:
                    with self._lock:
                        build = self._builds.get(f)
                        if build is not None and not build.done.is_set():
                            continue
                        self._builds.pop(f, None)
                    f.unlink()
            except FileNotFoundError:
                pass
