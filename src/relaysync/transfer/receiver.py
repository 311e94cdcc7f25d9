"""The receiving end of a mapping on a target: applies ops in order, commits atomically, acks.

A `ReceiverSession` takes the messages of one peer connection in batches (up to a Checkpoint)
and applies them in a worker thread. Files go through staging.py; other ops are applied
directly, each idempotent. The watermark (every seq up to it is committed) is persisted in the
target's manifest per source journal, after the batch is durable.

Error handling: a refused op that can never succeed (an unsafe path, a malformed op) is recorded
as failed and skipped; an op that may succeed later (hash mismatch, I/O error, full disk) stops
the batch, keeps the watermark before it, and is reported to the source, which retries. A
large file's partial stays for the retry: whole when it was verified, cut to whole chunks on a
full disk. A delta of a large file patches into the new version's partial, so a session that
ends mid-delta leaves a prefix of the new version that the retry resumes as a whole file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import xxhash

from relaysync.constants import CHUNK_BYTES, MAX_MESSAGE_BYTES
from relaysync.errors import HashMismatch, ProtocolError, TransferError, UnsafePath
from relaysync.protocol.messages import (
    INT64_MAX,
    INT64_MIN,
    MAX_LISTING_ENTRIES,
    MAX_PARTIALS,
    Ack,
    AnyMessage,
    Checkpoint,
    CommitRecord,
    Delete,
    DeltaStart,
    DigestReply,
    DigestRequest,
    DirListing,
    Erase,
    Error,
    ErrorCode,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    Partial,
    PartialRef,
    Rename,
    SetAttr,
    SmallFile,
    Symlink,
)
from relaysync.transfer import _librsync, codec, staging
from relaysync.transfer.patching import StreamingPatch
from relaysync.transfer.paths import SafeResolver, check_relpath, parent_of, resolve_inside
from relaysync.transfer.versions import VersionKeeper
from relaysync.watch.manifest import Entry, Manifest, mtime_ns_of, permission_bits

logger = logging.getLogger(__name__)

# A digest reply holds at most MAX_LISTING_ENTRIES entries and about this many bytes of them
# (20,000 names of NAME_MAX bytes would be 6 MB, over MAX_MESSAGE_BYTES).
LISTING_REPLY_BYTES = MAX_MESSAGE_BYTES // 2
ENTRY_WIRE_BYTES = 48  # a DirEntry on the wire besides its name: kind, hash, size, mtime, mode
PARTIALS_BYTES = (
    MAX_MESSAGE_BYTES // 4
)  # MappingState lists partials up to this many bytes of paths
RESUME_MIN_BYTES = 8 * 1024 * 1024  # files this large keep a named partial that survives a crash
# A partial a full disk stopped is kept (retries resume it) while it grows; one that has not grown
# for this long is dropped at its next full disk, so the space it holds goes to other files (of
# any mapping on that disk) instead of being held for ever, e.g. by two partials waiting on each other.
FULL_DISK_HOLD_S = 600.0
DELTAS_KEPT = (
    1024  # sizes of the deltas the latest large versions came by (TargetFolder.note_delta)
)
ReportFn = Callable[[int, Sequence[CommitRecord]], None]  # (watermark, records)


class TransientFailure(Exception):
    """An op failed in a way a retry may fix; the session stops at it."""

    def __init__(self, seq: int, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.seq, self.code, self.detail = seq, code, detail


@dataclass
class TargetFolder:
    """A folder this agent holds as a target of a mapping."""

    mapping_id: int
    source_node: str
    root: Path
    manifest: Manifest
    durable: bool
    link_secret: bytes = b""  # non-empty: the policy allows this source on a plain (TLS-off) link
    keep_versions: int = 0  # > 0: previous versions of replaced/deleted files kept beside the tree
    # Who may stream to us: our parent in the routing table (the source when there is none).
    parents: frozenset[str] = frozenset()
    route: tuple[str, ...] = ()  # the nodes the current session's stream came through (job log)
    route_epoch: int = 0  # of the routing table `parents` comes from
    members: frozenset[str] = (
        frozenset()
    )  # every node of the mapping: only they may hear ROUTES_STALE
    # A member of an N:M job (transfer/conflicts.py): "newest-mtime"; "" = the source is the truth.
    conflict: str = ""
    lock: threading.RLock = field(
        default_factory=threading.RLock
    )  # shared by the members on one root
    owner_of: Callable[[str, int, int], str] | None = (
        None  # (path, size, mtime_ns) -> other member source
    )
    # Directories proven real under root: shared by the members on one root like `lock`, so that
    # one member's rename or link there is never hidden from another member's cache.
    resolver: SafeResolver = field(default=None)  # type: ignore[assignment]  # set in __post_init__
    # Partials a full disk stopped: path -> (bytes kept, since when (monotonic) they have not grown).
    _full_disk: dict[str, tuple[int, float]] = field(default_factory=dict, init=False, repr=False)
    # (path, version hash) -> bytes of the delta that brought that large version, for a relay to
    # resume a child's partial of it as a source would (transfer/relay.py); in memory only.
    _deltas: dict[tuple[str, bytes], int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.parents:
            self.parents = frozenset({self.source_node})
        if self.resolver is None:
            self.resolver = SafeResolver(self.root)

    def keeper(self) -> VersionKeeper | None:
        return VersionKeeper(self.root, self.keep_versions) if self.keep_versions > 0 else None

    def watermark(self, journal_id: str) -> int:
        return int(self.manifest.get_meta(f"watermark:{journal_id}") or 0)

    def set_watermark(self, journal_id: str, seq: int) -> None:
        self.manifest.set_meta(f"watermark:{journal_id}", str(seq))

    # Resumable partials of large files: path -> content hash (hex), kept in the manifest's meta.
    # A partial's file goes with its entry: when the file commits (renamed into place), when the
    # path is deleted, renamed or erased, when a newer version starts, when the mapping goes.

    def _partials(self) -> dict[str, str]:
        return dict(json.loads(self.manifest.get_meta("partials") or "{}"))

    def _partial_file(self, path: str, digest_hex: str) -> Path:
        return staging.partial_name_for(
            self.root / path, bytes.fromhex(digest_hex), self.mapping_id
        )

    def add_partial(self, path: str, content_hash: bytes) -> None:
        partials = self._partials()
        older = partials.get(path)
        if older is not None and older != content_hash.hex():
            self._remove_partial_file(path, older)  # an older version's, never to be resumed
        partials[path] = content_hash.hex()
        self.manifest.set_meta("partials", json.dumps(partials))

    def drop_partial(self, path: str) -> None:
        """Forget the partial of `path` and remove its file (already gone after a commit)."""
        self.drop_partials([path])

    def drop_partials(self, paths: Iterable[str]) -> None:
        """`drop_partial` for many paths: one read and at most one write of the list."""
        partials = self._partials()
        doomed = [(path, partials.pop(path)) for path in paths if path in partials]
        self._forget(partials, doomed)

    def drop_partials_under(self, path: str) -> None:
        """Drop the partials at `path` and below it ("" = all): the path was deleted, renamed or erased."""
        partials = self._partials()
        prefix = f"{path}/" if path else ""
        doomed = [(p, partials.pop(p)) for p in list(partials) if p == path or p.startswith(prefix)]
        self._forget(partials, doomed)

    def drop_obsolete_partials(self, refs: Iterable[PartialRef]) -> int:
        """Drop the partials the source will never send the version of (a comparison found it
        deleted or replaced there): each only if it is still of that very version, never one of a
        newer version started since it was listed. Returns how many went."""
        partials = self._partials()
        doomed = [
            (ref.path, partials.pop(ref.path))
            for ref in refs
            if partials.get(ref.path) == ref.hash.hex()
        ]
        self._forget(partials, doomed)
        return len(doomed)

    def _forget(self, partials: dict[str, str], doomed: list[tuple[str, str]]) -> None:
        if not doomed:
            return
        for path, digest in doomed:
            self._remove_partial_file(path, digest)
            self._full_disk.pop(path, None)
        self.manifest.set_meta("partials", json.dumps(partials))

    def _remove_partial_file(self, path: str, digest_hex: str) -> None:
        try:
            resolve_inside(
                self.root, path
            )  # never through a symlink a local admin put where a directory was
            os.unlink(self._partial_file(path, digest_hex))
        except (UnsafePath, FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:  # the space stays taken until the next start's clean-up
            logger.warning("could not remove partial of %s: %s", path, exc)

    def keep_after_full_disk(self, path: str, kept: int) -> bool:
        """Whether the partial of `path`, cut by a full disk to `kept` bytes, stays (FULL_DISK_HOLD_S)."""
        now = time.monotonic()
        held, since = self._full_disk.get(path, (-1, now))
        if kept != held:  # it grew since the last full disk (or this is the first): a fresh hold
            self._full_disk[path] = (kept, now)
        elif now - since >= FULL_DISK_HOLD_S:
            del self._full_disk[path]
            return False
        return True

    def partial_hashes(self) -> dict[str, bytes]:
        """Path -> content hash of every partial this folder keeps."""
        return {path: bytes.fromhex(digest) for path, digest in self._partials().items()}

    def note_delta(self, path: str, content_hash: bytes, delta_bytes: int) -> None:
        """Remember that this version of `path` came as a delta of `delta_bytes` (the latest DELTAS_KEPT)."""
        self._deltas.pop((path, content_hash), None)
        self._deltas[(path, content_hash)] = delta_bytes
        if len(self._deltas) > DELTAS_KEPT:
            del self._deltas[next(iter(self._deltas))]

    def delta_bytes(self, path: str, content_hash: bytes) -> int | None:
        """The size of the delta this version of `path` came by, None if unknown (whole, or long ago)."""
        return self._deltas.get((path, content_hash))

    def partial_files(self) -> frozenset[Path]:
        return frozenset(self._partial_file(p, h) for p, h in self._partials().items())

    def list_partials(self) -> tuple[Partial, ...]:
        """The partials still on disk, each cut to whole chunks (a torn last chunk is resent)."""
        found: list[Partial] = []
        room = PARTIALS_BYTES  # more are not listed: they are sent whole (and their files go at commit)
        for path, digest in self._partials().items():
            try:
                size = self._partial_file(path, digest).stat().st_size // CHUNK_BYTES * CHUNK_BYTES
            except OSError:
                continue
            room -= len(path.encode("utf-8", "surrogateescape")) + 32
            if room < 0 or len(found) >= MAX_PARTIALS:
                break
            found.append(Partial(path=path, hash=bytes.fromhex(digest), size=size))
        return tuple(found)


@dataclass
class _Pending:
    """Records and manifest entries of files staged in the current commit batch."""

    entries: list[Entry] = field(default_factory=list)
    records: list[CommitRecord] = field(default_factory=list)
    last_seq: int = 0


class ReceiverSession:
    """Applies one source's stream of ops to one target folder."""

    def __init__(self, folder: TargetFolder, journal_id: str, report: ReportFn) -> None:
        self.folder = folder
        self.journal_id = journal_id
        self.report = report
        self.watermark = folder.watermark(journal_id)
        self._incoming: staging.IncomingFile | StreamingPatch | None = None
        self._incoming_msg: FileStart | DeltaStart | None = None
        self._incoming_started = 0.0
        self._incoming_wire = 0
        self._skip_seq = -1  # chunks of a file refused at FileStart are dropped
        self._keeper = folder.keeper()
        self._batch = staging.CommitBatch(
            durable=folder.durable, before_replace=self._keeper.save if self._keeper else None
        )
        self._pending = _Pending()
        self._applied: list[CommitRecord] = []
        self._seen_seq = self.watermark
        self._paths = folder.resolver
        # The sender resends a rename's new path whole when asked (its Hello: CAP_RENAME_RESEND).
        self.sender_resends_renames = False
        self._paths.forget()  # proven in an earlier session is not proven now

    # --- batch entry point (runs in a worker thread) ---

    def apply_batch(self, messages: Sequence[AnyMessage], wire_bytes: int = 0) -> list[AnyMessage]:
        """Apply messages in order; return the replies (Ack, Error, DigestReply)."""
        replies: list[AnyMessage] = []
        try:
            for message in messages:
                reply = self._apply_one(message)
                if reply is not None:
                    replies.append(reply)
        except TransientFailure as failure:
            full = failure.code == ErrorCode.DISK_FULL
            if full:
                self._keep_received_chunks(failure.seq)
                # The files verified in this batch would hold their space while the disk stays
                # full (two mappings on one disk would wait for each other for ever): they go,
                # and come again; only the file being received is kept (`FULL_DISK_HOLD_S`).
                self.folder.drop_partials(entry.path for entry in self._pending.entries)
            self._abort_incoming()
            self._batch.discard(keep_partials=not full)
            self._pending = _Pending()
            logger.warning(
                "change failed on target, source will retry: seq=%s code=%s detail=%s",
                failure.seq,
                failure.code.name,
                failure.detail,
            )
            replies.append(Error(code=failure.code, detail=failure.detail, seq=failure.seq))
        return replies

    def close(self) -> None:
        """Discard whatever is half-received (the old files stay in place); keep partials."""
        incoming = self._incoming
        if incoming is not None and incoming.temp.name.endswith(staging.PARTIAL_SUFFIX):
            incoming.close()  # resumable: the next session continues where this one stopped
            self._incoming = self._incoming_msg = None
        self._abort_incoming()
        self._batch.discard()

    # --- dispatch ---

    def _apply_one(self, message: AnyMessage) -> AnyMessage | None:
        match message:
            case SmallFile():
                self._small_file(message)
            case FileStart():
                self._start_file(message)
            case DeltaStart():
                self._start_delta(message)
            case FileChunk():
                self._write_chunk(message)
            case FileEnd():
                self._end_file(message)
            case FileAbort():
                self._abort_incoming()
                self._note(message.seq)
            case Checkpoint():
                return self._checkpoint(message.seq, message.obsolete)
            case DigestRequest():
                self.flush()
                return self._digests(message)
            case Delete() | MakeDir() | Symlink() | Rename() | SetAttr() | Erase():
                self.flush()
                if not isinstance(message, SetAttr | MakeDir):
                    self._paths.forget()  # it may turn a known directory into something else
                self._apply_op(message)
            case _:
                raise TransientFailure(
                    0, ErrorCode.NOT_EXPECTED, f"unexpected {type(message).__name__}"
                )
        return None

    def _note(self, seq: int) -> None:
        if seq > self._seen_seq:
            self._seen_seq = seq

    def _record(
        self,
        seq: int,
        op: str,
        path: str,
        *,
        size: int = 0,
        wire: int = 0,
        started: float,
        error: str = "",
        changed_at: float = 0.0,
    ) -> CommitRecord:
        now = time.time()
        return CommitRecord(
            seq=seq,
            op=op,
            path=path,
            size=size,
            wire_bytes=wire,
            ok=not error,
            error=error,
            duration_ms=(time.monotonic() - started) * 1000.0,
            committed_at=now,
            changed_at=changed_at,
        )

    # --- files ---

    def _start_file(self, msg: FileStart) -> None:
        self._abort_incoming()
        self._skip_seq = -1
        started = time.monotonic()
        try:
            final, parent_exists = self._paths.resolve(msg.path)
            self._incoming = self._open_incoming(msg, final, parent_exists)
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
            raise _transient_os(msg.seq, msg.path, exc) from exc
        if msg.offset:
            logger.info("resuming %s at offset %s of %s bytes", msg.path, msg.offset, msg.size)
        self._incoming_msg = msg
        self._incoming_started = started
        self._incoming_wire = 0

    def _open_incoming(
        self, msg: FileStart, final: str, parent_exists: bool
    ) -> staging.IncomingFile:
        """A temp file for the new content: a named, resumable partial for large files."""
        root = self.folder.root
        if msg.expected_hash and msg.size >= RESUME_MIN_BYTES:
            if self._batch.holds_final(
                final
            ):  # the same version twice in a batch: one partial each time
                self.flush()
            incoming = staging.IncomingFile.open_partial(
                root,
                Path(final),
                msg.expected_hash,
                owner=self.folder.mapping_id,
                size=msg.size,
                mode=msg.mode,
                mtime_ns=msg.mtime_ns,
                offset=msg.offset,
            )
            self.folder.add_partial(msg.path, msg.expected_hash)
            return incoming
        if msg.offset:
            raise FileNotFoundError(errno.ENOENT, "no partial kept for files this small", msg.path)
        return staging.IncomingFile.open(
            root,
            final,
            size=msg.size,
            mode=msg.mode,
            mtime_ns=msg.mtime_ns,
            parent_exists=parent_exists,
        )

    def _start_delta(self, msg: DeltaStart) -> None:
        """Receive a delta against the version we hold into a temp file; patch at FileEnd."""
        self._abort_incoming()
        self._skip_seq = -1
        started = time.monotonic()
        try:
            final = resolve_inside(self.folder.root, msg.path)
            entry = self.folder.manifest.get(msg.path)
            st = os.lstat(final)
        except UnsafePath as exc:
            self._refuse(msg.seq, "write", msg.path, str(exc), started, msg.changed_at)
            self._skip_seq = msg.seq
            return
        except FileNotFoundError:
            entry, st = None, None
        if (
            entry is None
            or st is None
            or entry.hash != msg.base_hash
            or not stat.S_ISREG(st.st_mode)
            or (entry.size, entry.mtime_ns) != (st.st_size, st.st_mtime_ns)
            or not _librsync.available()
        ):
            raise TransientFailure(
                msg.seq,
                ErrorCode.BASE_MISMATCH,
                f"{msg.path}: this target does not hold the delta's base version",
            )
        # A large new version whose hash the source sent goes to its named partial: what librsync
        # wrote when the link or this agent dies is a prefix of it, resumed as a whole file.
        # Not when this batch stages the path already: that file may be this very partial (the
        # same version twice), and the delta goes against the version committed before it.
        resumable = (
            bool(msg.expected_hash)
            and msg.size >= RESUME_MIN_BYTES
            and not self._batch.holds_final(str(final))
        )
        try:  # patched as the delta arrives (patching.py)
            self._incoming = StreamingPatch(
                self.folder.root,
                final,
                size=msg.size,
                mode=msg.mode,
                mtime_ns=msg.mtime_ns,
                parts=msg.parts,
                partial_of=msg.expected_hash if resumable else b"",
                owner=self.folder.mapping_id,
            )
        except OSError as exc:
            raise _transient_os(msg.seq, msg.path, exc) from exc
        if resumable:
            self.folder.add_partial(msg.path, msg.expected_hash)
        self._incoming_msg = msg
        self._incoming_started = started
        self._incoming_wire = 0

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
        try:
            final, parent_exists = self._paths.resolve(msg.path)
        except UnsafePath as exc:
            self._refuse(msg.seq, "write", msg.path, str(exc), started, msg.changed_at)
            return
        except OSError as exc:  # the path could not be checked (EACCES, EIO...): as for FileStart
            raise _transient_os(msg.seq, msg.path, exc) from exc
        try:
            data = msg.data if msg.codec == 0 else codec.decode_chunk(msg.codec, msg.data, msg.size)
            incoming = staging.IncomingFile.open(
                self.folder.root,
                final,
                size=msg.size,
                mode=msg.mode,
                mtime_ns=msg.mtime_ns,
                parent_exists=parent_exists,
            )
        except ProtocolError as exc:
            raise TransientFailure(msg.seq, ErrorCode.BAD_MESSAGE, str(exc)) from exc
        except OSError as exc:
            raise _transient_os(msg.seq, msg.path, exc) from exc
        try:
            incoming.append(data)
            incoming.finish(msg.hash)
        except HashMismatch as exc:  # not the bytes the source hashed: corrupt on the wire
            raise TransientFailure(msg.seq, ErrorCode.HASH_MISMATCH, str(exc)) from exc
        except TransferError as exc:  # more bytes than the announced size
            incoming.discard()
            raise TransientFailure(msg.seq, ErrorCode.BAD_MESSAGE, f"{msg.path}: {exc}") from exc
        except OSError as exc:
            incoming.discard()
            raise _transient_os(msg.seq, msg.path, exc) from exc
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

    def flush(self) -> None:
        """Make the staged files durable and visible, then record them in the manifest."""
        if not len(self._batch):
            return
        pending, self._pending = self._pending, _Pending()
        try:
            self._batch.commit()
        except OSError as exc:
            seq = pending.records[0].seq if pending.records else 0
            raise _transient_os(seq, "commit batch", exc) from exc
        self.folder.manifest.put_many(pending.entries)
        self.folder.drop_partials(
            entry.path for entry in pending.entries
        )  # any size: a stale one too
        now = time.time()  # visible and durable only now: the latency a reader sees ends here
        self._applied.extend(msgspec.structs.replace(r, committed_at=now) for r in pending.records)

    def _checkpoint(self, seq: int, obsolete: Sequence[PartialRef] = ()) -> Ack:
        self.flush()
        self._note(seq)
        if self._seen_seq > self.watermark:
            self.watermark = self._seen_seq
            self.folder.set_watermark(self.journal_id, self.watermark)
        if obsolete:  # after the watermark: no replay of the comparison's records brings them back
            dropped = self.folder.drop_obsolete_partials(obsolete)
            if dropped:
                logger.info("removed %s partials whose version the source no longer has", dropped)
        applied, self._applied = self._applied, []
        if applied:
            self.report(self.watermark, applied)
        return Ack(mapping_id=self.folder.mapping_id, watermark=self.watermark)

    def _refuse(
        self, seq: int, op: str, path: str, detail: str, started: float, changed_at: float = 0.0
    ) -> None:
        logger.warning("refused op from source: seq=%s op=%s path=%r: %s", seq, op, path, detail)
        self._applied.append(
            self._record(seq, op, path, started=started, error=detail, changed_at=changed_at)
        )
        self._note(seq)

    # --- other ops ---

    def _apply_op(self, msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase) -> None:
        started = time.monotonic()
        op = _OP_NAMES[type(msg)]
        self._drop_partials_of(msg)
        try:
            self._apply_op_unchecked(msg)
        except UnsafePath as exc:
            self._refuse(msg.seq, op, msg.path, str(exc), started, _changed_at(msg))
            return
        except FileNotFoundError as exc:
            self._refuse(
                msg.seq, op, msg.path, f"not found: {exc.filename}", started, _changed_at(msg)
            )
            return
        except OSError as exc:
            raise _transient_os(msg.seq, msg.path, exc) from exc
        except (OverflowError, ValueError) as exc:
            # A value the target cannot apply or store (an mtime past what utime or SQLite take):
            # the same op would fail again at every retry, so it is refused, not the session.
            self._refuse(msg.seq, op, msg.path, f"cannot apply: {exc}", started, _changed_at(msg))
            return
        record = self._record(msg.seq, op, msg.path, started=started, changed_at=_changed_at(msg))
        if isinstance(msg, Rename):  # the purger needs the new name too
            record = CommitRecord(**{**msgspec.structs.asdict(record), "new_path": msg.new_path})
        self._applied.append(record)
        self._note(msg.seq)

    def _drop_partials_of(self, msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase) -> None:
        """A partial of what this op replaces will never be resumed: its file goes now (an erase
        drops those of each child it removes)."""
        match msg:
            case Delete() | Symlink():
                self.folder.drop_partials_under(msg.path)
            case Rename():  # the moved file is resent under its new name if the target lacks it
                self.folder.drop_partials_under(msg.path)
                self.folder.drop_partials_under(msg.new_path)
            case MakeDir():  # a file there becomes this directory; what is below it stays
                self.folder.drop_partial(msg.path)

    def _apply_op_unchecked(
        self, msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase
    ) -> None:
        root, manifest = self.folder.root, self.folder.manifest
        match msg:
            case Delete():
                doomed = resolve_inside(root, msg.path)
                if self._keeper is not None:
                    self._keeper.save(doomed)
                staging.remove_any(doomed)
                self._sync_dir(root, parent_of(msg.path))
                manifest.remove_tree(msg.path)
            case MakeDir():
                self._make_dir(msg)
            case Symlink():
                self._make_link(msg)
            case Rename():
                self._rename(msg)
            case SetAttr():
                path = resolve_inside(root, msg.path)
                if not path.is_symlink():
                    os.chmod(path, permission_bits(msg.mode))
                os.utime(path, ns=(msg.mtime_ns, msg.mtime_ns), follow_symlinks=False)
                entry = manifest.get(msg.path)
                if entry is not None:
                    manifest.put_many([_with_attrs(entry, msg.mode, msg.mtime_ns)])
            case Erase():
                self._erase(msg)

    def _sync_dir(self, root: Path, rel_dir: str) -> None:
        if self.folder.durable:
            directory = resolve_inside(root, rel_dir, allow_root=True)
            if directory.is_dir():
                staging.fsync_dir(directory)

    def _make_dir(self, msg: MakeDir) -> None:
        path = resolve_inside(self.folder.root, msg.path)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            staging.remove_any(path)
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, permission_bits(msg.mode) or 0o755)
        self._sync_dir(self.folder.root, parent_of(msg.path))
        self.folder.manifest.put_many(
            [Entry(path=msg.path, kind="d", mode=permission_bits(msg.mode))]
        )

    def _make_link(self, msg: Symlink) -> None:
        root = self.folder.root
        path = resolve_inside(root, msg.path)
        staging.make_parents(root, path)
        temp = staging.temp_name_for(path)
        os.symlink(msg.target, temp)
        if path.is_dir() and not path.is_symlink():
            staging.remove_any(path)
        os.replace(temp, path)
        self._sync_dir(root, parent_of(msg.path))
        digest = xxhash.xxh3_128(msg.target.encode("utf-8", "surrogateescape")).digest()
        st = os.lstat(path)
        self.folder.manifest.put_many(
            [
                Entry(
                    path=msg.path,
                    kind="l",
                    hash=digest,
                    link_target=msg.target,
                    mtime_ns=mtime_ns_of(st),
                )
            ]
        )

    def _rename(self, msg: Rename) -> None:
        root = self.folder.root
        source = resolve_inside(root, msg.path)
        dest = resolve_inside(root, msg.new_path)
        if msg.new_path.startswith(f"{msg.path}/") or msg.path.startswith(f"{msg.new_path}/"):
            # into itself (EINVAL for ever) or over its own ancestor (which would delete it first)
            raise UnsafePath(
                msg.new_path, f"a rename of {msg.path!r} into itself or over its ancestor"
            )
        if not os.path.lexists(source):
            held = self.folder.manifest.get(msg.new_path)
            if os.path.lexists(dest) and (
                not msg.hash or (held is not None and held.hash == msg.hash)
            ):
                return  # applied before (a replay after a crash): nothing to do
            if msg.hash and self.sender_resends_renames:
                # Never got here (an atomic save's temp file was gone when the link read it; a
                # compare ran meanwhile): the new path must come whole, or the old version stays.
                raise TransientFailure(
                    msg.seq,
                    ErrorCode.BASE_MISMATCH,
                    f"{msg.path} is not here to rename: send {msg.new_path} whole",
                )
            if os.path.lexists(dest):
                return  # an older sender cannot resend it: the next comparison repairs it
            raise FileNotFoundError(errno.ENOENT, "rename source missing", msg.path)
        staging.make_parents(root, dest)
        if self._keeper is not None and os.path.lexists(dest):
            self._keeper.save(dest)  # a rename over a file replaces it
        if dest.is_dir() and not dest.is_symlink() and not source.is_dir():
            staging.remove_any(dest)
        os.replace(source, dest) if not dest.is_dir() else _replace_dir(source, dest)
        self._sync_dir(root, parent_of(msg.path))
        self._sync_dir(root, parent_of(msg.new_path))
        self.folder.manifest.rename_tree(msg.path, msg.new_path)

    def _erase(self, msg: Erase) -> None:
        directory = resolve_inside(self.folder.root, msg.path, allow_root=True)
        keep = set(msg.keep)
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):  # never through a symlink: it may point anywhere
            raise UnsafePath(msg.path, "erase of something that is not a real directory")
        for child in os.scandir(directory):
            if child.name in keep or child.name.startswith(staging.TEMP_PREFIX):
                continue
            rel = f"{msg.path}/{child.name}" if msg.path else child.name
            check_relpath(rel)
            if self._keeper is not None:
                self._keeper.save(Path(child.path))
            staging.remove_any(Path(child.path))
            self.folder.manifest.remove_tree(rel)
            self.folder.drop_partials_under(rel)
        self._sync_dir(self.folder.root, msg.path)

    def _digests(self, msg: DigestRequest) -> DigestReply:
        listings = []
        manifest = self.folder.manifest
        # per reply, so that it stays far below MAX_MESSAGE_BYTES and the sender's decode bounds
        budget, room = MAX_LISTING_ENTRIES, LISTING_REPLY_BYTES
        for d in msg.dirs:
            check_relpath(d, allow_root=True)
            if msg.hashes_only:
                listings.append(DirListing(path=d, entries=(), hash=manifest.dir_hash(d)))
                continue
            if (
                budget <= 0 or room <= 0
            ):  # the reply is full: the sender asks for this one again on its own
                listings.append(DirListing(path=d, entries=(), more=True))
                continue
            page = manifest.dir_listing(
                d, after=msg.after, limit=budget + 1
            )  # one more shows a cut
            kept = page.entries[:budget]
            for i, entry in enumerate(kept):
                room -= len(entry.name.encode("utf-8", "surrogateescape")) + ENTRY_WIRE_BYTES
                if room < 0 and i:  # a page alone always holds one entry: the sender makes progress
                    kept = kept[:i]
                    break
            budget -= len(kept)
            listings.append(
                DirListing(
                    path=d, entries=kept, exists=page.exists, more=len(kept) < len(page.entries)
                )
            )
        return DigestReply(mapping_id=msg.mapping_id, listings=tuple(listings))


_OP_NAMES: dict[type, str] = {
    Delete: "delete",
    MakeDir: "mkdir",
    Symlink: "symlink",
    Rename: "rename",
    SetAttr: "attr",
    Erase: "erase",
}


def _replace_dir(source: Path, dest: Path) -> None:
    """Rename a directory over an existing one (rename(2) needs the target empty)."""
    if source.is_dir() and not source.is_symlink():
        staging.remove_any(dest)
    os.replace(source, dest)


def _with_attrs(entry: Entry, mode: int, mtime_ns: int) -> Entry:
    return Entry(
        path=entry.path,
        kind=entry.kind,
        size=entry.size,
        mtime_ns=mtime_ns,
        mode=permission_bits(mode),
        hash=entry.hash,
        link_target=entry.link_target,
    )


def _changed_at(msg: Delete | MakeDir | Symlink | Rename | SetAttr | Erase) -> float:
    return 0.0 if isinstance(msg, Erase) else msg.changed_at  # Erase is catch-up work only


def _transient_os(seq: int, path: str, exc: OSError) -> TransientFailure:
    code = ErrorCode.DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ErrorCode.IO_ERROR
    return TransientFailure(seq, code, f"{path}: {exc.strerror or exc}")
