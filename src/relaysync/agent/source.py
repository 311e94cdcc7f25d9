"""A folder this agent is the source of: watch -> detect -> journal -> links to every target.

The pipeline: the Watcher's event batches go through the ChangeRecorder (stat, hash, compare
with the manifest), are appended durably to the journal (group commit), then applied to the
manifest, and only then are the target links woken. On start the whole tree is rescanned
against the manifest, so whatever changed while the agent was down is journaled too.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from relaysync.errors import SourceListError
from relaysync.protocol.messages import MappingSpec, nodes_below
from relaysync.transfer.compare import Unreadable
from relaysync.transfer.signatures import PRUNE_EVERY_S, SignatureStore
from relaysync.watch.buffer import coalesce
from relaysync.watch.changes import JournalRecord, PendingChange
from relaysync.watch.content_cache import ContentCache, MappingContent
from relaysync.watch.filters import PathFilter, encodes_utf8
from relaysync.watch.journal import Journal
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.watcher import FsEvent, Watcher

from ._closed import closed_paths, note_closed
from ._delete_runs import Mode
from ._hot_files import HotFileHold
from ._mass_delete_guard import MassDeleteGuard
from ._periodic_rescan import PeriodicRescan
from ._unreadable_recheck import UnreadableRecheck
from .links import children_of

logger = logging.getLogger(__name__)

EVENT_QUEUE = 64  # event batches buffered between the watcher and the recorder
JOURNAL_SLICE = 2_000  # changes journaled per write when a scan finds many
# A first scan journals its top-level entries FIRST_SCAN_GROUP_TOPS at a time, in parts of about
# FIRST_SCAN_GROUP_ENTRIES changes (one entry's more at most): one detection, journal write and
# manifest transaction each (`SourceMapping._scan_rest`).
FIRST_SCAN_GROUP_ENTRIES = 1_000
FIRST_SCAN_GROUP_TOPS = 16
HOT_FILE_S = 1.0  # a file a scan finds modified this recently may still be open for writing
CONTENT_EXPIRE_EVERY_S = 10.0  # how often kept contents past their time are dropped
FINAL_SCAN_WAIT_S = 10.0  # a first sync's closing rescan waits this long at most for the links
ACK_FLUSH_S = 0.2  # acks are persisted and the journal released at most this often, off the loop
RESCAN_INTERVAL_S = 3600.0  # a full rescan this often finds what the watcher missed (0 = never)


class SourceMapping(MassDeleteGuard, HotFileHold, PeriodicRescan):
    """The source side of one mapping on this agent."""

    def __init__(
        self,
        spec: MappingSpec,
        state_dir: Path,
        *,
        rescan_interval_s: float = RESCAN_INTERVAL_S,
        hot_file_s: float | None = None,
        content: ContentCache | None = None,
    ) -> None:
        self.spec = spec
        self.rescan_interval_s = rescan_interval_s  # 0: no periodic rescan (`_rescan_periodically`)
        # A file a scan finds modified this recently, and cannot tell complete, is held (None:
        # HOT_FILE_S as it is when the mapping starts).
        self.hot_file_s = HOT_FILE_S if hot_file_s is None else hot_file_s
        self.mapping_id = spec.mapping_id
        self.root = Path(spec.source_path)
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.filter = PathFilter(spec.include, spec.exclude, root=self.root)
        self._acks_path = state_dir / "acks.json"
        self._release_path = state_dir / "release.json"
        self.manifest = Manifest(state_dir / "manifest.db")
        try:
            self.journal = Journal(state_dir / "journal", fsync=spec.durability == "safe")
            # Signatures of the versions sent, so updates of large files go as deltas.
            self.signatures = (
                SignatureStore(state_dir / "signatures") if SignatureStore.enabled() else None
            )
            self._acks: dict[str, int] = self._load_acks()
            # Manual/reserved mode: only records up to send_upto go out; a release moves it on.
            self.release, self.send_upto = self._load_release()
        except BaseException:  # the agent retries a source that cannot start: nothing stays open
            self.close()
            raise
        # Small files' content read to hash, for the links: sent without a second read.
        self.content = MappingContent(
            content if content is not None else ContentCache(), spec.mapping_id, self._readers
        )
        self._readers_of: tuple[MappingSpec, int] | None = None  # (spec, links that take content)
        self.recorder = ChangeRecorder(self.root, self.manifest, self.filter, cache=self.content)
        self._new_records = anyio.Event()
        self._persisted_acks = dict(self._acks)  # what acks.json holds (written by _release)
        self._acks_changed = anyio.Event()  # set by an ack; the flusher persists it (_flush_acks)
        self._ack_seen = anyio.Event()  # set by every ack; `_final_scan` waits on a fresh one
        # link children owed a comparison: they take no records until it ran (`on_owed`)
        self._owed: set[str] = set()
        self.ready = anyio.Event()
        self.links_may_start = anyio.Event()  # `serve`: at `ready`; a first sync's at its own
        # The highest seq whose effect is in the manifest: a manifest comparison covers up to it.
        self.applied_seq = self.journal.last_seq
        # Files a scan found still being written (no close-write seen): re-checked when cool.
        # The value counts re-checks that found the path gone (see _recheck_held).
        self._held: dict[str, int] = {}
        self._held_open: dict[str, float] = {}  # held open for writing, since (`_hold_hot`)
        # Files there but not readable to hash, directories not listable: looked at again.
        self.unreadable = UnreadableRecheck(self.root)
        self._record_lock = anyio.Lock()
        # Mass-delete guard: held batches, recent deletes, the operator's confirmations seen.
        self._init_guard(spec.delete_confirm)
        self.realtime = spec.mode == "realtime"
        self.scanning = (
            False  # a first scan runs (`serve`); links defer their comparison until then
        )

    def _load_acks(self) -> dict[str, int]:
        try:
            data = json.loads(self._acks_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        if data.get("journal_id") != self.journal.journal_id:
            return {}
        return {k: int(v) for k, v in data.get("acks", {}).items()}

    def _load_release(self) -> tuple[int, int]:
        try:
            data = json.loads(self._release_path.read_text())
        except (FileNotFoundError, ValueError):
            return 0, 0
        if data.get("journal_id") == self.journal.journal_id:
            return int(data["release"]), int(data["send_upto"])
        if data.get("journal_id") == self.journal.previous_id:
            # A new journal id after a machine crash (Journal._start_afresh): the release counter
            # holds, but nothing is sent until the next release: targets catch up by a comparison,
            # which would send the changes made since the last release too.
            return int(data["release"]), 0
        return 0, 0

    def set_release(self, release: int) -> bool:
        """The master says send (release counter `release`): everything journaled so far may go.

        Returns True if this is a new release (the caller reports the seq it covers).
        """
        if release <= self.release:
            return False
        # Everything journaled when the operator sent: a change between its journaling and its
        # apply (`_record`) goes with this release, not the next; `send_limit` still waits for
        # the apply before it sends it.
        self.release, self.send_upto = release, self.journal.last_seq
        tmp = self._release_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "journal_id": self.journal.journal_id,
                    "release": release,
                    "send_upto": self.send_upto,
                }
            )
        )
        os.replace(tmp, self._release_path)  # the pending set survives restarts
        event, self._new_records = self._new_records, anyio.Event()
        event.set()
        logger.info(
            "release %s of mapping %s: sending up to seq %s",
            release,
            self.mapping_id,
            self.send_upto,
        )
        return True

    # --- SourceFolder protocol (transfer/link_ends.py) ---

    @property
    def send_limit(self) -> int:
        """Records up to this seq may be sent now."""
        return self.applied_seq if self.realtime else min(self.send_upto, self.applied_seq)

    async def wait_for_records(self, after_seq: int, timeout_s: float) -> None:
        """Return once records past `after_seq` may be sent, the first scan ended, or after
        `timeout_s`."""
        scanning = self.scanning
        with anyio.move_on_after(timeout_s):
            while self.send_limit <= after_seq and self.scanning == scanning:
                await self._new_records.wait()

    def on_ack(self, target_node: str, watermark: int) -> None:
        """A target committed up to `watermark`; persisted with the next flush (`_flush_acks`).

        Acks only move forward: within a session a target's watermark never goes back, and a
        relay's report of the targets below it may arrive late (an older report after a newer one).
        """
        if watermark > self._acks.get(target_node, -1):
            self._acks[target_node] = watermark
            self._acks_changed.set()
            self._ack_seen.set()

    def on_open(self, target_node: str, watermark: int) -> None:
        """A target's session opened at `watermark`, its own word on what it holds of this journal.

        The one way an ack goes back: a target that lost its tail (a machine crash in fast
        durability) or its data replays from there, and the journal must keep that for it. (A new
        journal id voids every ack: `_load_acks`.)
        """
        if self._acks.get(target_node) != watermark:
            self._acks[target_node] = watermark
            self._acks_changed.set()
            self._ack_seen.set()

    def on_owed(self, target_node: str, owed: bool) -> None:
        """A link's child is owed a comparison (it takes no records until a first scan ended and
        the comparison ran), or no longer: the closing rescan does not wait for its acks."""
        if owed:
            self._owed.add(target_node)
        else:
            self._owed.discard(target_node)
        self._ack_seen.set()

    def below(self, child: str) -> frozenset[str]:
        """The targets whose acks `child` relays: those below it in the routing table."""
        return nodes_below(self.spec.routes, child)

    def unreadable_now(self) -> Unreadable:
        """The files and directories there but not readable now: a comparison keeps them."""
        return self.unreadable.snapshot()

    def backlog(self, *, streaming: bool = False) -> int:
        """Return how many journal records the slowest target has not acknowledged yet; with
        `streaming`, of the targets taking records: not those owed a comparison (`on_owed`) or
        below such a child (a relay), which acknowledge none until it ran."""
        waiting = set(self._owed).union(*map(self.below, self._owed)) if streaming else set()
        acked = [
            self._acks.get(t.node_id, 0) for t in self.spec.targets if t.node_id not in waiting
        ]
        return max(0, self.journal.last_seq - min(acked)) if acked else 0

    async def _flush_acks(self) -> None:
        """Persist the acks and release the journal up to the slowest target, at most every
        ACK_FLUSH_S and in a worker thread: acks arrive per batch from every target, and each
        release writes two files (and fsyncs one in safe mode), which must not stall the links
        that share this event loop. A restart before a flush only finds older acks: the journal
        was released no further than they say, so nothing is lost (a little is sent again)."""
        try:
            while True:
                await self._acks_changed.wait()
                await anyio.sleep(ACK_FLUSH_S)  # the acks of the other targets come meanwhile
                self._acks_changed = anyio.Event()
                await anyio.to_thread.run_sync(self._release, dict(self._acks))
        finally:
            # Compared with what was persisted, not with the event: a stop while the flush above
            # waited for a worker thread found the event already replaced.
            if self._acks != self._persisted_acks:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._release, dict(self._acks))

    def _release(self, acks: dict[str, int]) -> None:
        targets = [t.node_id for t in self.spec.targets]
        if not targets or any(t not in acks for t in targets):
            return
        upto = min(acks[t] for t in targets)
        tmp = self._acks_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"journal_id": self.journal.journal_id, "acks": acks}))
        os.replace(tmp, self._acks_path)  # before the release: acks never lag the journal's start
        self._persisted_acks = acks
        self.journal.release(upto)

    # --- pipeline ---

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch, scan and journal until cancelled; started once the initial scan (of a first
        sync: its first top-level entry) is journaled, when `ready` is set too. Links start at
        `links_may_start`: then too, but a realtime first sync's as it begins (they connect
        while its first entry is scanned, and wait for its records; `scanning` keeps them from
        comparing) and a held one's once its whole scan is journaled."""
        # Off the event loop, as every look at the folder: it may be on a hung network mount.
        await anyio.to_thread.run_sync(self._ensure_root, abandon_on_cancel=True)
        send, receive = anyio.create_memory_object_stream[list[FsEvent]](EVENT_QUEUE)
        self.watcher = watcher = Watcher(self.root, self.filter)
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.serve, send)
            tg.start_soon(self._recheck_held)
            tg.start_soon(self.unreadable.serve, self._record)
            tg.start_soon(self._recheck_guard)
            tg.start_soon(self._flush_acks)
            tg.start_soon(self._prune_deltas)
            tg.start_soon(self._expire_content)
            first_sync = await anyio.to_thread.run_sync(self.manifest.count) == 0
            tops = await anyio.to_thread.run_sync(self._top_level_names) if first_sync else []
            self.scanning = bool(tops)
            # A first scan is journaled by top-level entries, the first alone, the rest in groups
            # (`_scan_rest`), and the links start as it begins: they connect while the first is
            # scanned, and stream while the rest is
            # scanned and hashed. A final rescan (stat only, now that the manifest knows every
            # file) catches what changed meanwhile (`_final_scan`: once the links have the
            # rest, not competing with their tail). Any other start scans first: links compare
            # against the manifest that scan brings up to date. A held (manual/reserved) first
            # sync's links wait for its whole scan: a release made while it was down is applied
            # as they start (`SourceRole._release`) and must cover the folder, not its first part.
            if tops and self.realtime:
                self.links_may_start.set()
            await self._record([FsEvent(kind="rescan", path=tops[0] if tops else "")])
            logger.info(
                "source %s ready (%s mode): %s entries, journal at seq %s%s",
                self.root,
                self.spec.mode,
                self.manifest.count(),
                self.journal.last_seq,
                f"; scanning {len(tops) - 1} more top-level entries" if tops else "",
            )
            self.ready.set()
            if not tops:
                self.links_may_start.set()
            task_status.started()
            if tops:
                await self._scan_rest(tops[1:])
                self.links_may_start.set()
                if self.backlog():
                    tg.start_soon(self._final_scan)
                else:  # no target waits for the scan's records: nothing to compete with
                    await self._final_scan()
            tg.start_soon(self._rescan_periodically)
            await self._consume(receive)

    async def _scan_rest(self, names: list[str]) -> None:
        """Journal the first scan of the top-level entries `names` in groups of
        FIRST_SCAN_GROUP_TOPS, each detected in parts that stop once they hold
        FIRST_SCAN_GROUP_ENTRIES changes (one entry's more at most: a large entry goes alone):
        each part is one detection, one journal write and one manifest transaction, where each
        top-level entry was (100 entries of 100 files: 99 of each; the manifest's commits were a
        fifth of its CPU)."""
        for start in range(0, len(names), FIRST_SCAN_GROUP_TOPS):
            group = names[start : start + FIRST_SCAN_GROUP_TOPS]
            await self._record(
                [FsEvent(kind="rescan", path=name) for name in group],
                stop_after=FIRST_SCAN_GROUP_ENTRIES,
            )

    async def _final_scan(self) -> None:
        """The first sync's closing rescan, once every target acknowledged the scan's records
        (at most FINAL_SCAN_WAIT_S): its stat of every file (0.1 s per 10,000 on the benchmark
        host) would otherwise take CPU from the links' last batches. Deferring it misses nothing:
        the watcher ran since before the scan, and what it saw meanwhile is journaled as usual."""
        with anyio.move_on_after(FINAL_SCAN_WAIT_S):
            while self.backlog(streaming=True) > 0:
                self._ack_seen = anyio.Event()
                await self._ack_seen.wait()
        await self._record([FsEvent(kind="rescan", path="")])
        self.scanning = False
        event, self._new_records = self._new_records, anyio.Event()
        event.set()  # links waiting to compare (`wait_for_records`) may now
        logger.info(
            "source %s scanned: %s entries, journal at seq %s",
            self.root,
            self.manifest.count(),
            self.journal.last_seq,
        )

    def _ensure_root(self) -> None:
        """Create a missing source folder (empty: its targets then get nothing, not deletes).

        Raises:
            OSError: it cannot be made (a file in its path, no permission): the source's retry
                says why, and the master shows it (`source_failures`).
        """
        if self.root.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)  # a file there: FileExistsError
        logger.warning(
            "source folder %s did not exist: created it, empty (if it is a mount point, the "
            "volume is not mounted)",
            self.root,
        )

    def _top_level_names(self) -> list[str]:
        """The source folder's entries, in the order a full scan visits them (less the names
        that are not UTF-8: the final full scan warns about those, knowing their kind)."""
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return []
        return [n for n in names if encodes_utf8(n)]

    async def _consume(self, receive: MemoryObjectReceiveStream[list[FsEvent]]) -> None:
        """Journal the watcher's batches; the mass-delete guard may defer their deletes (and
        judges them meanwhile). Once the watcher stops, what waits is judged at once."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._judge_deferred)
            async with receive:
                async for events in receive:
                    while True:  # drain what else is queued, so one journal write covers it all
                        try:
                            events = events + receive.receive_nowait()
                        except anyio.WouldBlock:
                            break
                    events += self.unreadable.rescans_for(events)  # a chmod back: rescanned now
                    await self._record(events, mode="defer")
            tg.cancel_scope.cancel()
        await self._judge_deferred_now()

    async def _expire_content(self) -> None:
        """Give back the memory of kept contents no link took in time, also while no change
        comes (a target down, then a quiet folder)."""
        while True:
            await anyio.sleep(CONTENT_EXPIRE_EVERY_S)
            self.content.expire()

    async def _prune_deltas(self) -> None:
        """Every PRUNE_EVERY_S, drop the deltas no link can use any more, in a worker thread:
        not only when the next delta starts, which may be never for a quiet folder."""
        while True:
            await anyio.sleep(PRUNE_EVERY_S)
            if self.signatures is not None:
                try:
                    await anyio.to_thread.run_sync(self.signatures.prune)
                except OSError as exc:
                    logger.warning(
                        "could not prune old deltas of mapping %s: %s", self.mapping_id, exc
                    )

    async def _record(
        self, events: Sequence[FsEvent], *, mode: Mode = "now", stop_after: int = 0
    ) -> None:
        """Detect and journal `events`; `mode`: how the mass-delete guard judges their deletes
        ("defer" for the watcher's batches: they may wait until it judges their run);
        `stop_after`: journal in parts of about that many changes (ChangeRecorder.detect)."""
        # One batch at a time: detect reads the manifest that the previous batch's apply wrote.
        async with self._record_lock:
            await self._record_locked(events, mode=mode, stop_after=stop_after)

    async def _record_locked(
        self, events: Sequence[FsEvent], *, mode: Mode = "now", stop_after: int = 0
    ) -> None:
        events = [e for e in events if self._names_encode(e.path, e.new_path)]
        closed, unclosed = closed_paths(events)
        rest = coalesce(events)  # after `closed`: the watcher keeps the writes a rescan covers
        # Every directory the scans met could be listed (else a whole-folder rescan did not see
        # all of it, and cannot end a mass-delete hold).
        listed = True
        skipped: set[str] = set()  # paths the guard did not journal (held or deferred)
        sent = self._guard_sent  # deletes journaled before
        while rest:
            # detect() stops before an event that needs the manifest to hold what it found so
            # far (`mv d e; rm e/f`): that part is journaled and applied first. Most batches go
            # whole, in one journal write.
            detection = await anyio.to_thread.run_sync(
                functools.partial(self.recorder.detect, rest, stop_after=stop_after)
            )
            self.unreadable.failed(detection.unreadable)
            listed = listed and not any(
                isinstance(e, SourceListError) for e in detection.unreadable
            )
            detected = [c for c in detection.changes if self._encodes(c)]
            skipped.update(await self._journal(detected, closed, unclosed, mode))
            rest = self._guard_skip_rest(detection.rest, skipped)
        if listed and not skipped and any(e.kind == "rescan" and not e.path for e in events):
            # the whole folder, and no mass delete in it: a hold ends
            self._guard_rescanned(self._guard_sent - sent)

    async def _journal(
        self, detected: list[PendingChange], closed: set[str], unclosed: set[str], mode: Mode
    ) -> list[str]:
        """Journal and apply detected changes, less the deletes the mass-delete guard holds or
        defers (and the changes tied to them); return the paths of those."""
        note_closed(closed, detected)  # a file closed, then renamed: closed under its new name
        changes = await self._hold_hot(detected, closed, unclosed)
        self._follow_held(detected)
        if not changes:
            return []
        changes, skipped = await anyio.to_thread.run_sync(
            functools.partial(self._guard_split, changes, mode=mode)
        )
        if self._deferred:
            self._deferral.set()  # the judge (`_judge_deferred`) wakes
        # A full scan can find 100,000 changes: journal them in slices, so the links start
        # streaming early and the journal records of one slice at a time are alive.
        for start in range(0, len(changes), JOURNAL_SLICE):
            records = await self.journal.append_async(changes[start : start + JOURNAL_SLICE])
            await anyio.to_thread.run_sync(self._apply, records)
            self.applied_seq = records[-1].seq
            del records
            event, self._new_records = self._new_records, anyio.Event()
            event.set()
        return skipped

    def _names_encode(self, *paths: str) -> bool:
        """False (and a warning, once per path) for a path the journal and manifest cannot hold.

        The filter keeps such names out of every event and scan; this is the last line, so
        that one bad name costs its own change, never the mapping (an exception here would
        stop the source, and the agent with it, again after every restart)."""
        return all(self.filter.utf8_path(p) for p in paths if p)

    def _encodes(self, change: PendingChange) -> bool:
        if not self._names_encode(change.path, change.new_path):
            return False
        entry = change.entry
        return entry is None or self.filter.utf8_link_target(change.path, entry.link_target)

    def _apply(self, records: Sequence[JournalRecord]) -> None:
        """Bring the manifest in step with journaled records, after the signature store: the
        signature of a deleted file goes, a renamed file's moves to its new path (signatures
        are kept per path, so they would otherwise stay for ever). The manifest, read before it
        changes, names the files below a deleted or renamed directory: it is brought up to date
        after each rename, so that a later record of the batch finds what the rename moved
        (`mv d tmp && rm -rf tmp`)."""
        if self.signatures is None:
            self.recorder.apply(records)
            return
        done = 0
        for i, rec in enumerate(records):
            if rec.op == "delete":
                for path in self._files_at(rec.path):
                    self.signatures.forget(path)
            elif rec.op == "rename":
                for path in self._files_at(rec.new_path):  # what the rename replaced
                    self.signatures.forget(path)
                for path in self._files_at(rec.path):
                    self.signatures.move(path, rec.new_path + path[len(rec.path) :])
                self.recorder.apply(records[done : i + 1])
                done = i + 1
        self.recorder.apply(records[done:])

    def _files_at(self, path: str) -> Iterator[str]:
        """`path` and every file the manifest knows below it."""
        yield path
        yield from (e.path for e in self.manifest.iter_entries(path) if e.kind == "f")

    async def rescan(self) -> None:
        """Rescan the whole folder now (after an operator's confirmation)."""
        await self._record([FsEvent(kind="rescan", path="")])

    def _readers(self) -> int:
        """The links that take a kept content (`MappingContent`), once per spec: one per child
        of the source in a realtime mapping; none in manual or reserved mode, whose sends wait
        for a release, long after an entry's time is up."""
        spec, counted = self.spec, self._readers_of
        if counted is None or counted[0] is not spec:
            n = len(children_of(spec, spec.source_node)) if spec.mode == "realtime" else 0
            counted = self._readers_of = (spec, n)
        return counted[1]

    def close(self) -> None:
        if hasattr(self, "content"):
            self.content.forget()
        if hasattr(self, "journal"):  # not when its opening failed (__init__ closes the rest)
            self.journal.close()
        self.manifest.close()
