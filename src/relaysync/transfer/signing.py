"""Signature keeping: the signing half of `signatures.SignatureStore`, one kept signature per path.

A version is signed as it is sent (inline up to INLINE_SIGN_MAX_BYTES, else later by a background
signer at nice SIGNER_NICE); `SignatureStore` adds the deltas computed from these signatures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from relaysync._util.fs import open_regular_in
from relaysync.transfer import delta
from relaysync.transfer.builds import DeltaBuild, version_of

logger = logging.getLogger(__name__)

DELTA_MIN_BYTES = 64 * 1024  # below this a whole file costs less than signature + delta bookkeeping
INLINE_SIGN_MAX_BYTES = 64 * 1024 * 1024  # whole copies up to this size are signed as they are read
SIGNER_NICE = 19  # the background signer yields the CPU to transfers
# On 2 cores one part is faster end to end (bench/delta.py): the other core is busy receiving
# and patching; parallel parts pay from 4 cores on.
PARALLEL_PARTS = max(1, min(4, (os.cpu_count() or 1) // 2))


def _index_signatures(sig_dir: Path) -> dict[str, str]:
    """Path key -> the name of its signature file, keeping the newest of any two (an older one
    is left by a store of the same dir that was closing while this one opened)."""
    index: dict[str, str] = {}
    for name in sorted(os.listdir(sig_dir), key=lambda n: _mtime_ns(sig_dir / n)):
        if name.endswith(".sig"):
            old = index.get(key := name.split(".", 1)[0])
            if old is not None:
                (sig_dir / old).unlink(missing_ok=True)
            index[key] = name
    return index


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


class SignatureKeeper:
    """Signatures keyed by (path, content hash), and the state `SignatureStore` shares with them."""

    def __init__(self, directory: Path, *, parallel_parts: int = PARALLEL_PARTS) -> None:
        self.dir = directory
        self.parallel_parts = parallel_parts
        (directory / "sig").mkdir(parents=True, exist_ok=True)
        (directory / "delta").mkdir(parents=True, exist_ok=True)
        for stale in (
            directory / "delta"
        ).iterdir():  # builds of an earlier run: none can be joined
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._builds: dict[
            Path, DeltaBuild
        ] = {}  # key of its part files -> build (running or done)
        # path -> (size of its last delta / size of the file, when)
        self._ratios: dict[str, tuple[float, float]] = {}
        self._pruned_at = time.monotonic()
        self._signing: set[tuple[str, bytes]] = (
            set()
        )  # versions a sender is signing as it sends them
        # path key -> the file name of its one signature: forget/move find it without listing
        # a directory of up to one signature per large file
        self._sig_names = _index_signatures(directory / "sig")
        self._in_flight: dict[
            str, int
        ] = {}  # path key -> signings running (a read may be under way)
        self._dropped: set[str] = set()  # keys forgotten while a signing ran: it must not install
        self._queue: deque[tuple[Path, str, bytes]] = deque()  # large versions sent, to sign
        self._queued: dict[tuple[str, bytes], threading.Event] = {}  # queued or being signed
        self._signer_running = False

    def sign_later(self, root: Path, path: str, content_hash: bytes) -> None:
        """Queue a large version just sent for signing by a background thread at nice 19, which
        takes only what transfers leave idle. A delta that needs a queued signature waits for it
        (`start_delta`)."""
        key = (path, content_hash)
        with self._lock:
            if key in self._queued or not self.enabled():
                return
            self._queued[key] = threading.Event()
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
            except Exception as exc:  # noqa: BLE001 - only the next delta is lost; the signer goes on
                logger.warning("could not sign %s for the next delta: %s", path, exc)
            finally:
                with self._lock:
                    done = self._queued.pop((path, content_hash), None)
                if done is not None:
                    done.set()

    @staticmethod
    def enabled() -> bool:
        return delta.available()

    def _key(self, path: str) -> str:
        return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:32]

    def _sig_path(self, path: str, content_hash: bytes) -> Path:
        return self.dir / "sig" / f"{self._key(path)}.{content_hash.hex()}.sig"

    def has(self, path: str, content_hash: bytes) -> bool:
        return self._sig_path(path, content_hash).exists()

    def signer_for(self, path: str, content_hash: bytes, size: int) -> delta.BlockSigner | None:
        """A signer for the sender about to read this version, unless its signature is kept
        already or another link is signing it (with many targets, one link signs). The caller
        calls `keep` with the result or `release` if it stops."""
        if (
            not DELTA_MIN_BYTES <= size <= INLINE_SIGN_MAX_BYTES
            or not self.enabled()
            or (content_hash and self.has(path, content_hash))
        ):
            return None
        with self._lock:
            if (path, content_hash) in self._signing:
                return None
            self._signing.add((path, content_hash))
            self._begin_signing(self._key(path))
        return delta.BlockSigner(size)

    def sent_whole(
        self,
        root: Path,
        path: str,
        content_hash: bytes,
        size: int,
        signer: delta.BlockSigner | None,
    ) -> None:
        """A version was read whole to be sent: keep what `signer` signed from that read, or
        queue a version too large to sign inline for the background signer."""
        signature = signer.signature() if signer is not None else None
        if signature is not None:
            self.keep(path, content_hash, signature)
        elif size > INLINE_SIGN_MAX_BYTES:
            self.sign_later(root, path, content_hash)  # off the send path, at nice 19

    def release(self, path: str, content_hash: bytes) -> None:
        with self._lock:
            if (path, content_hash) in self._signing:
                self._signing.discard((path, content_hash))
                self._end_signing(self._key(path))

    def _begin_signing(self, key: str) -> None:  # under the lock; see _install
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def _end_signing(self, key: str) -> None:  # under the lock, installed or not
        left = self._in_flight.pop(key) - 1
        if left:
            self._in_flight[key] = left
        else:
            self._dropped.discard(key)

    def forget(self, path: str) -> None:
        """The source deleted `path`: unlink its signature, which nothing can use any more (a
        file created there later is sent whole first); a signing of it under way installs
        nothing. Its deltas go with the next prune."""
        key = self._key(path)
        with self._lock:
            self._forget_locked(key)
        self._ratios.pop(path, None)

    def move(self, path: str, new_path: str) -> None:
        """The source renamed `path` to `new_path`: its signature is kept as `new_path`'s (it
        is named by content hash, so a delta uses it only if the target holds that version at
        `new_path`), replacing what `new_path` had."""
        key, new_key = self._key(path), self._key(new_path)
        with self._lock:
            name = self._sig_names.pop(key, None)
            self._forget_locked(key)
            self._forget_locked(new_key)
            if name is not None:
                new_name = f"{new_key}.{name.split('.', 1)[1]}"
                try:
                    os.replace(self.dir / "sig" / name, self.dir / "sig" / new_name)
                    self._sig_names[new_key] = new_name
                except FileNotFoundError:
                    pass
        ratio = self._ratios.pop(path, None)
        if ratio is not None:
            self._ratios[new_path] = ratio

    def _forget_locked(self, key: str) -> None:
        name = self._sig_names.pop(key, None)
        if name is not None:
            (self.dir / "sig" / name).unlink(missing_ok=True)
        if key in self._in_flight:
            self._dropped.add(key)

    def keep(self, path: str, content_hash: bytes, signature: bytes) -> None:
        """Keep `signature` as the one of `path`'s version `content_hash` (the version sent last),
        replacing the older one. A full state disk loses only the next delta."""
        if self.has(path, content_hash):
            return
        sig = self._sig_path(path, content_hash)
        tmp = sig.with_suffix(
            f".{threading.get_ident()}.tmp"
        )  # links may sign the same version at once
        try:
            tmp.write_bytes(signature)
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a full state disk must not keep half a signature
            logger.warning("could not keep the signature of %s for the next delta: %s", path, exc)
            return
        self._install(path, sig, tmp)

    def remember(self, root: Path, path: str, content_hash: bytes) -> None:
        """Sign the file as it is now, if it is a regular file that still has `content_hash`
        (else a newer version, or a record of what replaced it, follows)."""
        if not self.enabled() or self.has(path, content_hash):
            return
        opened = open_regular_in(root, path)
        if opened is None:
            return
        fd, st = opened
        try:
            if st.st_size >= DELTA_MIN_BYTES:
                self._sign(path, fd, st, content_hash)
        finally:
            os.close(fd)

    def _sign(self, path: str, fd: int, st: os.stat_result, wanted: bytes) -> bytes | None:
        """Sign the version open on `fd` and return its content hash, if it is still the version
        `st` describes and, with `wanted`, has that hash (else None). One read serves both."""
        key = self._key(path)
        tmp = self.dir / "sig" / f"{key}.{threading.get_ident()}.signing.tmp"
        with self._lock:
            self._begin_signing(key)
        try:
            return self._sign_into(path, fd, st, wanted, tmp)
        finally:
            with self._lock:
                self._end_signing(key)

    def _sign_into(
        self, path: str, fd: int, st: os.stat_result, wanted: bytes, tmp: Path
    ) -> bytes | None:
        try:
            digest = delta.signature(fd, tmp)
            if version_of(os.fstat(fd)) != version_of(st) or (wanted and digest != wanted):
                tmp.unlink(missing_ok=True)
                return None
        except (OSError, delta.SignatureError) as exc:
            tmp.unlink(missing_ok=True)  # a full state disk must not keep half a signature
            if not isinstance(exc, FileNotFoundError):
                logger.warning("could not sign %s for the next delta: %s", path, exc)
            return None
        if self.has(path, digest):
            tmp.unlink(missing_ok=True)
        else:
            self._install(path, self._sig_path(path, digest), tmp)
        return digest

    def _install(self, path: str, sig: Path, tmp: Path) -> None:
        key = self._key(path)
        with self._lock:
            # another link signed this version meanwhile, or the path was deleted or renamed
            # away while this version was read
            if sig.exists() or key in self._dropped:
                tmp.unlink(missing_ok=True)
                return
            old = self._sig_names.get(key)
            if old is not None:
                (self.dir / "sig" / old).unlink(missing_ok=True)
            os.replace(tmp, sig)
            self._sig_names[key] = sig.name
