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

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence

import msgspec

from relaysync.constants import MAX_MESSAGE_BYTES, MAX_PATH_BYTES
from relaysync.protocol.messages import (
    MAX_LISTING_ENTRIES,
    MAX_REMOVED_BYTES,
    MAX_REPORT_RECORDS,
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
    PartialRef,
    Rename,
    SetAttr,
    SmallFile,
    Symlink,
)
from relaysync.transfer import staging
from relaysync.transfer._failures import TransientFailure, _transient_os, permanent_detail
from relaysync.transfer._file_receiver import FileReceiver, _Pending
from relaysync.transfer._state_failures import (
    is_state_io,
    state_cleanup,
    state_failure,
    state_writes,
)
from relaysync.transfer._tree_ops import TreeOps
from relaysync.transfer.patching import StreamingPatch
from relaysync.transfer.paths import DirHandles, check_relpath
from relaysync.transfer.target_folder import TargetFolder

logger = logging.getLogger(__name__)

# A digest reply holds at most MAX_LISTING_ENTRIES entries and about this many bytes of them
# (20,000 names of NAME_MAX bytes would be 6 MB, over MAX_MESSAGE_BYTES).
LISTING_REPLY_BYTES = MAX_MESSAGE_BYTES // 2
ENTRY_WIRE_BYTES = 48  # a DirEntry on the wire besides its name: kind, hash, size, mtime, mode
ReportFn = Callable[[int, Sequence[CommitRecord]], None]  # (watermark, records)
# The records of applied ops held until the next Checkpoint: past either bound they are reported
# and the watermark saved up to the last op applied, as a Checkpoint would, so that a stream of
# ops without one (a hostile or broken source) holds memory flat instead of ~330 bytes an op.
APPLIED_RECORDS_MAX = MAX_REPORT_RECORDS  # one report's worth (agent/master_link.py)
APPLIED_BYTES_MAX = 4 * MAX_REMOVED_BYTES  # of their paths, errors and removed paths
RECORD_BYTES = 200  # a CommitRecord's own objects besides its strings


class ReceiverSession(FileReceiver, TreeOps):
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
        # of the files of a batch; a directory made on the way gets what a MakeDir's 0o755 would
        self._dirs = DirHandles(
            folder.root, folder.tree_changes, dir_mode=folder.policy.disk_mode(0o755)
        )
        self._batch = staging.CommitBatch(
            durable=folder.durable,
            before_replace=self._keep_replaced if self._keeper else None,
            mode_mask=folder.policy.mode_mask,
            check_dir=self._dirs.check_still_there,
        )
        self._pending = _Pending()
        self._applied: list[CommitRecord] = []
        self._applied_counted = 0  # of _applied, those whose bytes _applied_bytes holds
        self._applied_bytes = 0
        self._seen_seq = self.watermark
        # The sender resends a rename's new path whole when asked (its Hello: CAP_RENAME_RESEND).
        self.sender_resends_renames = False
        # What a batch applied before a change the source must send whole is kept (not as a relay:
        # its spool keeps whole batches only, `_keep_applied_before`).
        self.keeps_applied_before_refusal = False

    def _keep_replaced(self, dir_fd: int, name: str, final: str) -> None:
        """Keep the version a commit is about to replace at `name` in `dir_fd` (`final` is
        root/path, as IncomingFile names it)."""
        if self._keeper is not None:
            self._keeper.save(dir_fd, name, final.removeprefix(f"{self.folder.root}/"))

    # --- batch entry point (runs in a worker thread) ---

    def apply_batch(self, messages: Sequence[AnyMessage], wire_bytes: int = 0) -> list[AnyMessage]:
        """Apply messages in order; return the replies (Ack, Error, DigestReply)."""
        replies: list[AnyMessage] = []
        try:
            self._apply_all(messages, replies)
        except TransientFailure as failure:
            self._stopped_at(failure)
            logger.warning(
                "change failed on target, source will retry: seq=%s code=%s detail=%s",
                failure.seq,
                failure.code.name,
                failure.detail,
            )
            replies.append(Error(code=failure.code, detail=failure.detail, seq=failure.seq))
        finally:
            self._settle_dirs()  # the next batch proves its directories anew
        return replies

    def _apply_all(self, messages: Sequence[AnyMessage], replies: list[AnyMessage]) -> None:
        """Apply `messages` in order, adding their replies to `replies`.

        Raises:
            TransientFailure: an op failed in a way a retry may fix, the target's state (its
            manifest.db, maybe on another file system than the root) could not be written
            included: DISK_FULL or IO_ERROR naming it (`_state_failures`).
        """
        seq = 0
        try:
            for message in messages:
                seq = getattr(message, "seq", seq)
                try:
                    reply = self._apply_one(message)
                except RecursionError:  # nothing recurses over a path; if something did: refused
                    self._refuse_message(message, "too deep for this target to apply")
                    reply = None
                if reply is not None:
                    replies.append(reply)
                elif self._applied_full():
                    self._save_progress()
        except sqlite3.Error as exc:  # any other state write of an op (a partial's, a tree op's)
            if not is_state_io(exc):
                raise
            raise state_failure(seq, self.folder.manifest.path, exc) from exc

    def _stopped_at(self, failure: TransientFailure) -> None:
        """Undo what the batch stopped by `failure` staged (or keep what it applied before a
        change the source sends whole). A state write failing here is logged only: the failure
        is what the source must hear, and what was not written is redone by the retry."""
        full = failure.code == ErrorCode.DISK_FULL
        db_path = self.folder.manifest.path
        if full:
            self._keep_received_chunks(failure.seq)
            # The files verified in this batch would hold their space while the disk stays
            # full (two mappings on one disk would wait for each other for ever): they go,
            # and come again; only the file being received is kept (`FULL_DISK_HOLD_S`).
            with state_cleanup(db_path, "dropping the partials of a failed batch"):
                self.folder.drop_partials(entry.path for entry in self._pending.entries)
        with state_cleanup(db_path, "dropping the partial of the file being received"):
            self._abort_incoming()
        if not self._keep_applied_before(failure):
            self._batch.discard(keep_partials=not full)
            self._pending = _Pending()

    def _keep_applied_before(self, failure: TransientFailure) -> bool:
        """Keep what the batch applied before a change the source sends whole next (the target
        lacks its base, or it did not rebuild: BASE_MISMATCH, HASH_MISMATCH): commit the files
        staged, report, and save the watermark up to the seq before it, so the next session
        starts at that change instead of sending the whole batch again (K such changes in one
        batch would cost K resends of it). Every op before it was applied, in order. False (the
        batch is discarded) for any other failure, as a relay, or if the commit fails."""
        if not self.keeps_applied_before_refusal or failure.code not in (
            ErrorCode.BASE_MISMATCH,
            ErrorCode.HASH_MISMATCH,
        ):
            return False
        try:
            self.flush()
        except TransientFailure:
            return False
        if failure.seq > 0:  # its own ops applied so far come again, and are reported then
            self._applied = [r for r in self._applied if r.seq < failure.seq]
            self._applied_counted = self._applied_bytes = 0
        self._seen_seq = max(self.watermark, min(self._seen_seq, failure.seq - 1))
        try:
            self._report_and_save()
        except TransientFailure as unsaved:  # the watermark stays: all of the batch comes again
            logger.warning("could not save the watermark before a refused change: %s", unsaved)
        return True

    def _settle_dirs(self) -> None:
        """Close the batch's directory descriptors if no staged or incoming file uses one; else
        only have them opened anew at their next use."""
        if not len(self._batch) and self._incoming is None:
            self._dirs.release()
        else:
            self._dirs.forget()

    def _refuse_message(self, message: AnyMessage, detail: str) -> None:
        """Refuse whatever op `message` is (its chunks are skipped)."""
        self._abort_incoming()
        seq, path = getattr(message, "seq", 0), getattr(message, "path", "")
        self._skip_seq = seq
        self._refuse(seq, type(message).__name__.lower(), path, detail, time.monotonic())

    def close(self) -> None:
        """Discard whatever is half-received (the old files stay in place); keep partials."""
        incoming = self._incoming
        if incoming is not None and incoming.temp.name.endswith(staging.PARTIAL_SUFFIX):
            incoming.close()  # resumable: the next session continues where this one stopped
            self._incoming = self._incoming_msg = None
        try:
            self._abort_incoming()
        finally:  # a failed state write must not leave the staged files open
            try:
                self._batch.discard()
            finally:
                self._dirs.release()

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
                if message.path:
                    self._unreadable_on_source(message)
                self._note(message.seq)
            case Checkpoint():
                return self._checkpoint(message.seq, message.obsolete)
            case DigestRequest():
                self.flush()
                return self._digests(message)
            case Delete() | MakeDir() | Symlink() | Rename() | SetAttr() | Erase():
                self.flush()
                if not isinstance(message, SetAttr | MakeDir):
                    self.folder.tree_changes.forget()  # it may turn a directory into something else
                if not (isinstance(message, MakeDir) and self._make_new_dir(message)):
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

    def flush(self) -> None:
        """Make the staged files durable and visible, then record them in the manifest."""
        if not len(self._batch):
            return
        pending, self._pending = self._pending, _Pending()
        seq = pending.records[0].seq if pending.records else 0
        try:
            visible_at = self._batch.commit()
        except OSError as exc:
            raise _transient_os(seq, "commit batch", exc) from exc
        finally:
            if self._incoming is None:  # what the files of a tree op's batch held can go now
                self._dirs.close_retired()
        # The files are in place: if their state cannot be written, the source sends them again.
        with state_writes(seq, self.folder.manifest.path):
            self.folder.manifest.put_many(pending.entries)
            self.folder.drop_partials(
                entry.path for entry in pending.entries
            )  # any size: a stale one too
        # the latency a reader sees ends at the rename, not after the manifest's write: that one
        # can take tens of milliseconds on a busy disk, and the file is served meanwhile
        self._applied.extend(
            msgspec.structs.replace(r, committed_at=visible_at) for r in pending.records
        )

    def _checkpoint(self, seq: int, obsolete: Sequence[PartialRef] = ()) -> Ack:
        self.flush()
        self._note(seq)
        self._report_and_save()
        if obsolete:  # after the watermark: no replay of the comparison's records brings them back
            dropped = self.folder.drop_obsolete_partials(obsolete)
            if dropped:
                logger.info("removed %s partials whose version the source no longer has", dropped)
        return Ack(mapping_id=self.folder.mapping_id, watermark=self.watermark)

    def _report_and_save(self) -> None:
        """Report the records held and save the watermark up to the last op seen (all applied)."""
        # Reported (the agent keeps the report on disk) before the watermark is saved: a kill
        # between the two makes the source send these again and the master take them as
        # repeats; the other way round, the master would never hear of them.
        applied, self._applied = self._applied, []
        self._applied_counted = self._applied_bytes = 0
        if applied:
            self.report(max(self._seen_seq, self.watermark), applied)  # as saved just below
        if self._seen_seq > self.watermark:
            with state_writes(self._seen_seq, self.folder.manifest.path):
                self.folder.set_watermark(self.journal_id, self._seen_seq)
            self.watermark = self._seen_seq

    def _applied_full(self) -> bool:
        """Whether the records held until the next Checkpoint reached a bound."""
        for record in self._applied[self._applied_counted :]:
            self._applied_bytes += RECORD_BYTES + _record_bytes(record)
        self._applied_counted = len(self._applied)
        return (
            self._applied_counted >= APPLIED_RECORDS_MAX or self._applied_bytes >= APPLIED_BYTES_MAX
        )

    def _save_progress(self) -> None:
        """A Checkpoint's work without one, between two ops: commit what is staged, report, and
        save the watermark. Not while a file is being received: its seq is not applied yet (and
        every op before it is, so the watermark is right whenever this runs)."""
        if self._incoming is not None:
            return
        self.flush()
        self._report_and_save()

    def _refuse(
        self, seq: int, op: str, path: str, detail: str, started: float, changed_at: float = 0.0
    ) -> None:
        logger.warning("refused op from source: seq=%s op=%s path=%r: %s", seq, op, path, detail)
        self._applied.append(
            self._record(seq, op, path, started=started, error=detail, changed_at=changed_at)
        )
        self._note(seq)

    def _unreadable_on_source(self, msg: FileAbort) -> None:
        """The source could not read `msg.path`: a failed attempt for the job log (the master
        shows it with the source's reason); the source retries it, and its commit resolves it."""
        logger.warning(
            "source could not read a file, it retries: seq=%s path=%r: %s",
            msg.seq,
            msg.path,
            msg.reason,
        )
        self._applied.append(
            self._record(msg.seq, "write", msg.path, started=time.monotonic(), error=msg.reason)
        )

    def _os_failed(
        self, seq: int, op: str, path: str, exc: OSError, started: float, changed_at: float = 0.0
    ) -> None:
        """Refuse the op if no retry can fix `exc` (a path too long for this target...), else
        raise the TransientFailure that stops the session for the source to retry."""
        detail = permanent_detail(path, exc)
        if detail is None:
            raise _transient_os(seq, path, exc) from exc
        self._skip_seq = seq  # a file's chunks follow
        self._refuse(seq, op, path, detail, started, changed_at)

    def _digests(self, msg: DigestRequest) -> DigestReply:
        listings = []
        manifest = self.folder.manifest
        # per reply, so that it stays far below MAX_MESSAGE_BYTES and the sender's decode bounds
        budget, room = MAX_LISTING_ENTRIES, LISTING_REPLY_BYTES
        for d in msg.dirs:
            check_relpath(d, allow_root=True, max_depth=MAX_PATH_BYTES)  # read only
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


def _record_bytes(record: CommitRecord) -> int:
    strings = (record.path, record.error, record.new_path, *record.removed)
    return sum(len(text) for text in strings)
