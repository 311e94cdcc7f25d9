"""The source's signature store: block signatures of the last version of each large file sent.

When a file changes, the version its targets hold is the one the source sent last; the source
kept that version's signature, so it computes the delta itself, with no round trip to the
targets and once for all of them. Signatures and deltas live on disk in the source's state dir.

A version is signed as it is sent, from the same read: a whole copy up to INLINE_SIGN_MAX_BYTES
feeds what the sender reads to a `delta.BlockSigner`; a delta's new version is signed by its
build while the delta is computed (instead of only hashing it), once for every link. No second read, and the signature is there when
the next change comes. Larger whole copies are signed afterwards by a background thread at nice
19 (signing costs about 0.3 s of CPU per GiB, which measured 15-25 % slower first copies of
1 GiB on 2 busy cores when done on the send path); a delta waits for a queued signature.

Resource handling: one signature per path (replaced when a newer version is signed), found
through an index of the signature directory kept in memory; the source calls `forget` for a
deleted path and `move` for a renamed one, so no signature outlives its file. A delta
is kept while a link may still join it: a failed build's files go at once, a done build's
when a build of a newer version of its path starts, the rest after DELTA_MAX_AGE_S (`prune`,
which the source runs every PRUNE_EVERY_S), and all of them when the store is opened (no link
can join a build of an earlier run). Links read a build's files through fds opened under the
store's lock (`open_parts`), and every unlink decides and unlinks under that lock too, so
unlinking never pulls a file from under a reader, nor a new build's file from under the build.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from relaysync._util.fs import open_regular_in
from relaysync.transfer import delta
from relaysync.transfer.builds import DeltaBuild, DeltaPart, hash_version, version_of
from relaysync.transfer.signing import SignatureKeeper

logger = logging.getLogger(__name__)

DELTA_MAX_AGE_S = 600.0  # deltas older than this are pruned (links re-create them if needed)
# Files this large are split into parts whose deltas are computed at once, one per core (the
# target applies them in order); a block that straddles a part boundary is sent as literal.
PARALLEL_MIN_BYTES = 16 * 1024 * 1024
SIGN_WAIT_S = (
    5.0  # a delta waits this long for its base's queued signature, then the whole file goes
)
DELTA_MAX_RATIO = 0.9  # "auto": after a delta this large relative to its file, send that file whole
DELTA_RETRY_S = (
    600.0  # after a delta that saved nothing, whole copies for this long, then a delta again
)
PRUNE_EVERY_S = 60.0  # deltas older than DELTA_MAX_AGE_S are looked for this often


class SignatureStore(SignatureKeeper):
    """Signatures keyed by (path, content hash) and deltas keyed by (path, base, new)."""

    def start_delta(
        self,
        root: Path,
        path: str,
        base_hash: bytes,
        opened: tuple[int, os.stat_result] | None = None,
    ) -> DeltaBuild | None:
        """Start (or join) computing the delta from the signed `base_hash` version to the file now.

        The delta file grows while the search writes it, so links stream it as it is produced; a
        build for the same (base, file as it is now) is shared by every link that asks.

        Args:
            opened: the new version as `open_regular` returned it (the caller keeps its fd);
                without it, root/path is opened that way here.

        Returns:
            the build, or None if no signature of `base_hash` is kept, or the file is gone or
            is not a regular file.
        """
        if opened is None:
            opened = open_regular_in(root, path)
            if opened is None:
                return None
            try:
                return self.start_delta(root, path, base_hash, opened)
            finally:
                os.close(opened[0])
        fd, st = opened
        sig = self._sig_path(path, base_hash)
        queued = self._queued.get((path, base_hash))
        if queued is not None:  # the base was sent a moment ago and is still being signed
            queued.wait(SIGN_WAIT_S)
        self._prune_now_and_then()
        version = "-".join(str(x) for x in version_of(st))
        key = self.dir / "delta" / f"{self._key(path)}.{base_hash.hex()}.{version}"
        count = self.parallel_parts if st.st_size >= PARALLEL_MIN_BYTES else 1
        bounds = [st.st_size * i // count for i in range(count + 1)]
        with self._lock:
            # Joined before the signature is looked for: the first link to send this version
            # signs it, which replaces the base's signature that the other links would need.
            build = self._builds.get(key)
            if build is not None and (not build.done.is_set() or build.exists()):
                return build
            if not sig.exists():
                return None
            self._drop_superseded(path, st)
            parts = [DeltaPart(key.with_name(f"{key.name}.{i}.delta")) for i in range(count)]
            try:
                # read now: signing the new version (right after) replaces the base's signature
                sums = sig.read_bytes()
            except FileNotFoundError:
                return None
            try:
                for part in parts:
                    part.path.write_bytes(b"")  # readers may open it before the search does
                # the build's own fd: a link that stops early closes its fd, not this one
                build_fd = os.dup(fd)
            except OSError as exc:  # a full state disk: the whole file goes instead
                logger.warning("cannot start a delta of %s: %s", path, exc)
                return None
            build = DeltaBuild(key=key, stat=st, parts=parts, fd=build_fd, _pending=count + 1)
            self._builds[key] = build
        threading.Thread(
            target=self._sign_new_version,
            args=(build, path),
            name=f"delta sign {path[-40:]}",
            daemon=True,
        ).start()
        for i, part in enumerate(parts):
            # every part ends where the version's size says: a file that grows meanwhile fails
            # the version check in _finish, and the search never reads past that size
            threading.Thread(
                target=self._build_part,
                args=(build, part, sums, path, bounds[i], bounds[i + 1]),
                name=f"delta {i} {path[-40:]}",
                daemon=True,
            ).start()
        return build

    def open_parts(self, build: DeltaBuild) -> list[BinaryIO] | None:
        """Open every part file of `build` for reading (the caller closes them), or None if the
        build was dropped meanwhile (a newer version's build superseded it, or it failed): the
        file then goes whole. Opened under the lock that unlinking takes, so once a link holds
        them nothing it reads can go away."""
        files: list[BinaryIO] = []
        with self._lock:
            try:
                for part in build.parts:
                    files.append(open(part.path, "rb", buffering=0))  # noqa: SIM115 - the caller closes them
            except FileNotFoundError:
                for f in files:
                    f.close()
                return None
        return files

    def _drop_superseded(self, path: str, st: os.stat_result) -> None:
        """Under the lock: unlink the done builds of `path` for another version than `st`'s (the
        file changed since, so no link can join them; links streaming them hold their files open)."""
        prefix = f"{self._key(path)}."
        for key, build in list(self._builds.items()):
            if (
                key.name.startswith(prefix)
                and build.done.is_set()
                and version_of(build.stat) != version_of(st)
            ):
                self._unlink_build(build)

    def _unlink_build(self, build: DeltaBuild) -> None:
        """Under the lock: forget `build` and unlink its files."""
        self._builds.pop(build.key, None)
        for part in build.parts:
            part.path.unlink(missing_ok=True)

    def _build_part(
        self, build: DeltaBuild, part: DeltaPart, sums: bytes, path: str, start: int, end: int
    ) -> None:
        try:
            delta.delta(sums, build.fd, part.path, start=start, length=end - start)
            part.ok = True
        except (OSError, delta.SignatureError) as exc:
            logger.warning("delta of %s failed, the whole file goes instead: %s", path, exc)
        finally:
            part.done.set()
            self._step_done(build, path)

    def _sign_new_version(self, build: DeltaBuild, path: str) -> None:
        """Sign the new version (one read gives the signature and the content hash), once for
        every link that sends this build; if it cannot be signed (a full state disk), hash it."""
        try:
            build.new_hash = self._sign(path, build.fd, build.stat, b"") or hash_version(
                build.fd, build.stat
            )
        finally:
            self._step_done(build, path)

    def _step_done(self, build: DeltaBuild, path: str) -> None:
        with self._lock:
            build._pending -= 1
            last = build._pending == 0
        if last:
            self._finish(build, path)

    def _finish(self, build: DeltaBuild, path: str) -> None:
        try:
            build.ok = (
                all(p.ok for p in build.parts)
                and build.new_hash is not None
                and version_of(os.fstat(build.fd)) == version_of(build.stat)
            )
            if build.ok and build.stat.st_size:
                size = sum(p.path.stat().st_size for p in build.parts)
                self._ratios[path] = (size / build.stat.st_size, time.monotonic())
        except OSError as exc:
            logger.warning("delta of %s failed, the whole file goes instead: %s", path, exc)
            build.ok = False
        finally:
            os.close(build.fd)
            if not build.ok:  # the links streaming it hold its files open; no other can join it
                with self._lock:
                    self._unlink_build(build)
            build.done.set()  # after the unlink: a link that sees the failure finds no files left

    def delta_ratio(self, path: str) -> float | None:
        """The size of the last delta of this file over the file's, or None if none was made."""
        seen = self._ratios.get(path)
        return seen[0] if seen is not None else None

    def delta_pays(self, path: str) -> bool:
        """False when the last delta of this file saved almost nothing (a whole copy is simpler);
        after DELTA_RETRY_S a delta is tried again (the file may have settled)."""
        ratio, at = self._ratios.get(path, (0.0, 0.0))
        return ratio <= DELTA_MAX_RATIO or time.monotonic() - at > DELTA_RETRY_S

    def _prune_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            try:
                self.prune()
            except OSError as exc:
                logger.warning("could not prune old deltas in %s: %s", self.dir, exc)

    def prune(self, max_age_s: float = DELTA_MAX_AGE_S) -> None:
        """Unlink the delta files older than `max_age_s`, unless their build is still running.

        Looked at and unlinked under the lock that `start_delta` creates a build's files under:
        a build of the same key started meanwhile (its base's signature is still kept when the
        new version could not be signed) has fresh files, which are left to it.
        """
        cutoff = time.time() - max_age_s
        for f in (self.dir / "delta").iterdir():
            key = f.with_name(f.name.rsplit(".", 2)[0])  # <key>.<part>.delta
            with self._lock:
                try:
                    if f.stat().st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    continue
                build = self._builds.get(key)
                if build is None:
                    f.unlink(missing_ok=True)
                elif build.done.is_set():
                    self._unlink_build(build)
