"""The receiving of files on a target: whole files, deltas and small files, verified and staged."""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from relaysync._util.fs import open_regular_in
from relaysync.constants import CHUNK_BYTES
from relaysync.errors import (
    DeltaBaseUnreadable,
    HashMismatch,
    ProtocolError,
    TransferError,
    UnsafePath,
)
from relaysync.protocol.messages import (
    INT64_MAX,
    INT64_MIN,
    CommitRecord,
    DeltaStart,
    ErrorCode,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    SmallFile,
)
from relaysync.transfer import _librsync, codec, staging
from relaysync.transfer._failures import TransientFailure, _transient_os
from relaysync.transfer._new_dirs import NewDir, made_with
from relaysync.transfer._session_hooks import SessionHooks
from relaysync.transfer.patching import StreamingPatch
from relaysync.transfer.paths import DirHandles, check_relpath, parent_of
from relaysync.transfer.target_folder import RESUME_MIN_BYTES, TargetFolder
from relaysync.watch.manifest import Entry, permission_bits

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    """Records and manifest entries of files staged in the current commit batch."""

    entries: list[Entry] = field(default_factory=list)
    records: list[CommitRecord] = field(default_factory=list)
    last_seq: int = 0


class FileReceiver(SessionHooks):
    """The file ops of a `ReceiverSession` (a mixin: the session holds the state they use)."""

    folder: TargetFolder
    _batch: staging.CommitBatch
    _pending: _Pending
    _dirs: DirHandles
    _incoming: staging.IncomingFile | StreamingPatch | None
    _incoming_msg: FileStart | DeltaStart | None
    _incoming_started: float
    _incoming_wire: int
    _skip_seq: int
    # Whether a MakeDir of a missing directory builds it under a temp name, for its files to be
    # written in it at their own names (transfer/_new_dirs.py). Not for an N:M job's member: it
    # judges each staged file against the disk at the commit (transfer/conflicts.py).
    stages_new_dirs = True

    def _make_new_dir(self, msg: MakeDir) -> bool:
        """Stage the directory `msg` makes, if nothing is at its path, with its mode and job
        record, visible at the next commit; False if not staged (its parent missing, unsafe,
        anything at the path, an error): the usual MakeDir applies it, or refuses it, then."""
        if not self.stages_new_dirs:
            return False
        started = time.monotonic()
        mode = permission_bits(msg.mode)
        try:
            check_relpath(msg.path)
            parent = self._dirs.get(parent_of(msg.path))
            new_dir = NewDir.make(parent, msg.path, self.folder.policy.disk_mode(mode or 0o755))
        except (UnsafePath, OSError):
            return False
        if new_dir is None:
            return False
        self._batch.add_dir(new_dir)
        self.folder.drop_partial(msg.path)  # of a file once at its path: never resumed now
        self._pending.entries.append(Entry(path=msg.path, kind="d", mode=mode))
        self._pending.records.append(
            self._record(msg.seq, "mkdir", msg.path, started=started, changed_at=msg.changed_at)
        )
        self._note(msg.seq)
        return True

    def _commit_new_dir(self) -> None:
        """Commit the batch if it makes a directory: what comes next is not one of its files."""
        if self._batch.new_dir is not None:
            self.flush()

    def _start_file(self, msg: FileStart) -> None:
        self._abort_incoming()
        self._commit_new_dir()
        self._skip_seq = -1
        started = time.monotonic()
        try:
            self._incoming = self._open_incoming(msg)
        except UnsafePath as exc:
            self._refuse(msg.seq, "write", msg.path, str(exc), started, msg.changed_at)
            self._skip_seq = msg.seq
            return
        except FileNotFoundError as exc:
            if msg.offset:
                self.folder.drop_partial(msg.path)
                raise TransientFailure(
                    msg.seq, ErrorCode.RESUME_LOST, f"{msg.path}: {exc.strerror}"
                ) from exc
            raise _transient_os(msg.seq, msg.path, exc) from exc
        except OSError as exc:
            self._os_failed(msg.seq, "write", msg.path, exc, started, msg.changed_at)
            return
        if msg.offset:
            logger.info("resuming %s at offset %s of %s bytes", msg.path, msg.offset, msg.size)
        self._incoming_msg = msg
        self._incoming_started = started
        self._incoming_wire = 0

    def _open_incoming(self, msg: FileStart) -> staging.IncomingFile:
        """A temp file for the new content: a named, resumable partial for large files.

        Raises:
            UnsafePath: a directory on its way is a symlink or not a directory.
            OSError: the temp file could not be made.
        """
        final = self._final_name(msg.path)
        if msg.expected_hash and msg.size >= RESUME_MIN_BYTES:
            if self._batch.holds_final(
                final
            ):  # the same version twice in a batch: one partial each time
                self.flush()
            # Made, resumed and renamed in its directory held open, as a small file is: a
            # directory on its way swapped for a link never leads it (or its lock) outside.
            dir_fd, made = self._dirs.make(parent_of(msg.path))
            incoming = staging.IncomingFile.open_partial(
                final,
                msg.expected_hash,
                owner=self.folder.mapping_id,
                size=msg.size,
                mode=msg.mode,
                mtime_ns=msg.mtime_ns,
                offset=msg.offset,
                dir_fd=dir_fd,
                made_dir=None if made is None else self.folder.root / made,
            )
            try:
                self.folder.add_partial(msg.path, msg.expected_hash, made_dir=incoming.made_dir)
            except BaseException:
                incoming.close()  # kept on disk, as a partial is; its fd is not
                raise
            return incoming
        if msg.offset:
            raise FileNotFoundError(errno.ENOENT, "no partial kept for files this small", msg.path)
        return staging.IncomingFile.open(
            final,
            size=msg.size,
            mode=msg.mode,
            mtime_ns=msg.mtime_ns,
            dir_fd=self._dirs.get(parent_of(msg.path), create=True),
        )

    def _final_name(self, path: str) -> str:
        """root/path as a string (the staged file's name in logs, the version keeper's path).

        Raises:
            UnsafePath: as check_relpath.
        """
        check_relpath(path)
        return f"{self.folder.root}/{path}"

    def _start_delta(self, msg: DeltaStart) -> None:
        """Receive a delta against the version we hold into a temp file; patch at FileEnd."""
        self._abort_incoming()
        self._commit_new_dir()
        self._skip_seq = -1
        started = time.monotonic()
        try:
            final = self._final_name(msg.path)
            dir_fd = self._dirs.get(parent_of(msg.path))
        except UnsafePath as exc:
            self._refuse(msg.seq, "write", msg.path, str(exc), started, msg.changed_at)
            self._skip_seq = msg.seq
            return
        except FileNotFoundError:
            dir_fd = -1  # no directory, no base: a whole file instead
        except OSError as exc:  # the path could not be checked (EACCES, EIO...): as for FileStart
            self._os_failed(msg.seq, "write", msg.path, exc, started, msg.changed_at)
            return
        base = self._open_base(msg, dir_fd)
        self._incoming, resumable = self._patch_from(msg, final, base, dir_fd)
        if resumable:
            self.folder.add_partial(msg.path, msg.expected_hash)
        self._incoming_msg = msg
        self._incoming_started = started
        self._incoming_wire = 0

    def _open_base(self, msg: DeltaStart, dir_fd: int) -> int:
        """A descriptor of the version `msg` goes against (the caller closes it, or hands it on).

        Raises:
            TransientFailure: BASE_MISMATCH (the source sends the whole file then): it is not
            there, not the version the manifest says, or cannot be opened (a retried delta
            would fail the same way for ever).
        """
        entry = self.folder.manifest.get(msg.path)  # first: nothing is open yet if it raises
        base = None
        if dir_fd >= 0:
            try:  # no link on its way followed: nothing outside the folder is read as the base
                base = open_regular_in(self.folder.root, msg.path)
            except OSError as exc:  # EACCES, EIO, EMFILE...: a whole file needs no base
                logger.warning("cannot open the delta base %s: %s", msg.path, exc)
        if base is None or not _is_base(entry, base[1], msg.base_hash):
            if base is not None:
                os.close(base[0])
            raise _base_mismatch(
                msg.seq, f"{msg.path}: this target does not hold the delta's base version"
            )
        return base[0]

    def _patch_from(
        self, msg: DeltaStart, final: str, base: int, dir_fd: int
    ) -> tuple[StreamingPatch, bool]:
        """The patch of `msg`'s delta onto `base` (taken over) into `dir_fd`, and whether its
        output is the new version's named partial.

        Raises:
            TransientFailure: BASE_MISMATCH if the base cannot be read, else as the OSError.
        """
        # A large new version whose hash the source sent goes to its named partial: what librsync
        # wrote when the link or this agent dies is a prefix of it, resumed as a whole file.
        # Not when this batch stages the path already: that file may be this very partial (the
        # same version twice), and the delta goes against the version committed before it.
        resumable = (
            bool(msg.expected_hash)
            and msg.size >= RESUME_MIN_BYTES
            and not self._batch.holds_final(final)
        )
        try:  # patched as the delta arrives (patching.py)
            patch = StreamingPatch(
                Path(final),
                base=base,
                dir_fd=dir_fd,
                size=msg.size,
                mode=msg.mode,
                mtime_ns=msg.mtime_ns,
                parts=msg.parts,
                partial_of=msg.expected_hash if resumable else b"",
                owner=self.folder.mapping_id,
            )
        except DeltaBaseUnreadable as exc:
            raise _base_mismatch(msg.seq, str(exc)) from exc
        except OSError as exc:
            raise _transient_os(msg.seq, msg.path, exc) from exc
        return patch, resumable

    def _write_chunk(self, msg: FileChunk) -> None:
        if msg.seq == self._skip_seq:
            return
        if (
            self._incoming is None
            or self._incoming_msg is None
            or self._incoming_msg.seq != msg.seq
        ):
            raise TransientFailure(msg.seq, ErrorCode.NOT_EXPECTED, "chunk without a file start")
        try:
            data = msg.data if msg.codec == 0 else codec.decode_chunk(msg.codec, msg.data)
            self._incoming.write(msg.offset, data)
        except DeltaBaseUnreadable as exc:
            raise _base_mismatch(msg.seq, str(exc)) from exc
        except (TransferError, ProtocolError) as exc:
            # A delta librsync refused is corrupt on the wire, like a whole file whose hash is wrong.
            code = (
                ErrorCode.HASH_MISMATCH
                if isinstance(self._incoming, StreamingPatch)
                else ErrorCode.BAD_MESSAGE
            )
            raise TransientFailure(msg.seq, code, str(exc)) from exc
        except OSError as exc:
            raise _transient_os(msg.seq, self._incoming_msg.path, exc) from exc
        self._incoming_wire += len(msg.data)

    def _end_file(self, msg: FileEnd) -> None:
        if msg.seq == self._skip_seq:
            self._note(msg.seq)
            return
        incoming, start = self._incoming, self._incoming_msg
        if incoming is None or start is None or start.seq != msg.seq:
            raise TransientFailure(msg.seq, ErrorCode.NOT_EXPECTED, "file end without a file start")
        if isinstance(incoming, StreamingPatch):
            incoming = self._patch(start, incoming)  # until patched, still the file being received
        self._incoming = self._incoming_msg = None
        try:
            incoming.finish(msg.hash)
        except HashMismatch as exc:
            self.folder.drop_partial(start.path)
            raise TransientFailure(msg.seq, ErrorCode.HASH_MISMATCH, str(exc)) from exc
        if isinstance(start, DeltaStart) and start.expected_hash and start.size >= RESUME_MIN_BYTES:
            self.folder.note_delta(start.path, start.expected_hash, self._incoming_wire)
        self._stage(incoming, start, msg.hash, self._incoming_wire, self._incoming_started)

    def _small_file(self, msg: SmallFile) -> None:
        """A whole small file in one message: write, verify and stage it at once."""
        self._abort_incoming()
        self._skip_seq = -1
        started = time.monotonic()
        new_dir = self._batch.new_dir
        if new_dir is not None and parent_of(msg.path) != new_dir.path:
            self.flush()
            new_dir = None
        try:
            final = self._final_name(msg.path)
            dir_fd = (
                new_dir.fd
                if new_dir is not None
                else self._dirs.get(parent_of(msg.path), create=True)
            )
        except UnsafePath as exc:
            self._refuse(msg.seq, "write", msg.path, str(exc), started, msg.changed_at)
            return
        except OSError as exc:  # the path could not be checked (EACCES, EIO...): as for FileStart
            self._os_failed(msg.seq, "write", msg.path, exc, started, msg.changed_at)
            return
        try:
            data = msg.data if msg.codec == 0 else codec.decode_chunk(msg.codec, msg.data, msg.size)
            disk_mode = permission_bits(msg.mode) & ~self._batch.mode_mask
            incoming = staging.IncomingFile.whole(
                final,
                data,
                msg.hash,
                size=msg.size,
                mode=msg.mode,
                mtime_ns=msg.mtime_ns,
                dir_fd=dir_fd,
                new_dir=new_dir,
                final_mode=disk_mode if new_dir is not None and made_with(disk_mode) else None,
                finish=not self._batch.durable,
            )
        except ProtocolError as exc:
            raise TransientFailure(msg.seq, ErrorCode.BAD_MESSAGE, str(exc)) from exc
        except HashMismatch as exc:  # not the bytes the source hashed: corrupt on the wire
            raise TransientFailure(msg.seq, ErrorCode.HASH_MISMATCH, str(exc)) from exc
        except TransferError as exc:  # more bytes than the announced size
            raise TransientFailure(msg.seq, ErrorCode.BAD_MESSAGE, f"{msg.path}: {exc}") from exc
        except staging.LateStepFailed as exc:  # the commit's steps, taken early: as it fails
            raise _transient_os(msg.seq, "commit batch", exc.error) from exc.error
        except OSError as exc:
            if new_dir is not None and isinstance(exc, FileExistsError):
                self.flush()  # the same name twice in the batch: the second goes the usual way
                self._small_file(msg)
                return
            self._os_failed(msg.seq, "write", msg.path, exc, started, msg.changed_at)
            return
        self._stage(incoming, msg, msg.hash, len(msg.data), started)

    def _stage(
        self,
        incoming: staging.IncomingFile,
        start: FileStart | DeltaStart | SmallFile,
        content_hash: bytes,
        wire: int,
        started: float,
    ) -> None:
        """Queue a verified file for the next commit, with its manifest entry and job record."""
        if not (INT64_MIN <= start.mtime_ns <= INT64_MAX and 0 <= start.size <= INT64_MAX):
            # validate() refuses these off the wire. Committed, it would be visible on disk and
            # then fail the manifest's write (SQLite INTEGER): the batch would come again for ever.
            incoming.discard()
            self.folder.drop_partial(start.path)
            self._refuse(
                start.seq,
                "write",
                start.path,
                "size or mtime outside the signed 64-bit range",
                started,
                start.changed_at,
            )
            return
        self._batch.add(incoming)
        self._pending.entries.append(
            Entry(
                path=start.path,
                kind="f",
                size=start.size,
                mtime_ns=start.mtime_ns,
                mode=permission_bits(start.mode),
                hash=content_hash,
            )
        )
        self._pending.records.append(
            self._record(
                start.seq,
                "write",
                start.path,
                size=start.size,
                wire=wire,
                started=started,
                changed_at=start.changed_at,
            )
        )
        self._note(start.seq)
        if len(self._batch) >= 256:
            self.flush()

    def _patch(self, start: FileStart | DeltaStart, delta: StreamingPatch) -> staging.IncomingFile:
        """The new version `delta` patched. On failure `delta` stays the file being received, for
        `apply_batch` to keep its partial (a full disk) or drop it (anything else)."""
        try:
            return delta.finish()
        except OSError as exc:
            raise _transient_os(start.seq, start.path, exc) from exc
        except DeltaBaseUnreadable as exc:
            raise _base_mismatch(start.seq, str(exc)) from exc
        except TransferError as exc:  # librsync refused the delta: corrupt on the wire
            raise TransientFailure(
                start.seq, ErrorCode.HASH_MISMATCH, f"{start.path}: {exc}"
            ) from exc

    def _keep_received_chunks(self, seq: int) -> None:
        """A full disk stopped the large file `seq`: keep its partial cut to whole chunks, so each
        retry resends at most one chunk and the file resumes once there is space again. A delta's
        output is kept the same way: a prefix of the new version, resumed as a whole file."""
        incoming, start = self._incoming, self._incoming_msg
        if isinstance(incoming, StreamingPatch) and incoming.resumable:
            incoming.stop()  # librsync writes nothing more: what its output holds is what is cut
            incoming = incoming.output
        if (
            not isinstance(incoming, staging.IncomingFile)
            or start is None
            or start.seq != seq
            or not incoming.temp_name.endswith(staging.PARTIAL_SUFFIX)
        ):
            return
        kept = incoming.received // CHUNK_BYTES * CHUNK_BYTES  # what the resume rehashes from disk
        if not self.folder.keep_after_full_disk(start.path, kept):
            logger.warning(
                "full disk: dropping the partial of %s, stuck at %s bytes", start.path, kept
            )
            return
        try:
            incoming.keep(kept)
        except OSError as exc:
            logger.warning("full disk: could not cut the partial of %s: %s", start.path, exc)
            return
        self._incoming = self._incoming_msg = None
        logger.info("full disk: keeping %s bytes of %s to resume", kept, start.path)

    def _abort_incoming(self) -> None:
        incoming, start = self._incoming, self._incoming_msg
        if incoming is not None:
            incoming.discard()
            patched_partial = isinstance(incoming, StreamingPatch) and incoming.resumable
            if start is not None and (isinstance(start, FileStart) or patched_partial):
                self.folder.drop_partial(start.path)
        self._incoming = self._incoming_msg = None


def _base_mismatch(seq: int, detail: str) -> TransientFailure:
    """The failure that has the source send the whole file instead of a delta."""
    return TransientFailure(seq, ErrorCode.BASE_MISMATCH, detail)


def _is_base(entry: Entry | None, st: os.stat_result, base_hash: bytes) -> bool:
    """Whether the file open with `st` is the version the manifest's `entry` says it is, with
    the delta's base hash (and librsync is there to apply it)."""
    return (
        entry is not None
        and entry.hash == base_hash
        and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
        and _librsync.available()
    )
