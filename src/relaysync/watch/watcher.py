"""The watcher: recursive raw inotify that reports closed writes, paired moves and overflows.

A file is reported on CLOSE_WRITE only, never while it is being written. A new directory gets
its watch first and is then reported as "rescan", so files created in it before the watch
existed are found by the scan (a directory renamed before its CREATE was read is watched, and
rescanned, under its new name when the move is read); its subtree is listed and watched in a
worker thread, never on the event loop, before the next event is handled. MOVED_FROM/MOVED_TO with one cookie
become one "move"; a MOVED_FROM left alone for MOVE_PAIR_S after it was read (whatever else
arrives meanwhile) becomes "delete", a lone MOVED_TO becomes "rescan". A kernel queue overflow
becomes "rescan" of the whole tree. A root deleted, moved away or unmounted is lost (`root_lost`,
"rescan" of it) until a directory is back at its path; one replaced at its path (a symlink
switched) is watched again and rescanned (`_root.py`).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
from asyncinotify import Event, Inotify, Mask

from relaysync.constants import UNWATCHED_SCAN_INTERVAL_S
from relaysync.watch._fsevent import EventKind, FsEvent, anonymous_inode
from relaysync.watch._pending_move import PendingFrom
from relaysync.watch._root import RootPresence, RootWatching
from relaysync.watch._tree_watches import TreeWatches, under
from relaysync.watch.buffer import coalesce
from relaysync.watch.filters import PathFilter
from relaysync.watch.scanner import join

__all__ = ["FsEvent", "Watcher"]

logger = logging.getLogger(__name__)

MOVE_PAIR_S = 0.02  # a MOVED_TO follows its MOVED_FROM within microseconds; 20 ms is generous
PAIR_BATCH_MAX_S = 0.1  # a batch waiting for MOVED_TOs goes out then, however busy the tree
MODIFY_QUIET_S = 1.0  # a file modified without close-write (truncate) goes after this quiet
INOTIFY_READ_EVENTS = 4096  # events read per read(2), so a burst is one batch
BATCH_MAX_EVENTS = 4 * INOTIFY_READ_EVENTS  # read into one batch; the rest wait for the next
_SIMPLE: dict[Mask, EventKind] = {
    Mask.CLOSE_WRITE: "write",
    Mask.DELETE: "delete",
    Mask.ATTRIB: "attr",
}
# Events whose handling needs no other directory's watch than their own (which exists: an event
# comes from a watch added): a burst of `mkdir`s has its new directories watched at once.
_PLAIN = Mask.CREATE | Mask.CLOSE_WRITE | Mask.MODIFY | Mask.ATTRIB | Mask.DELETE | Mask.ISDIR


def _reads_tables(mask: Mask) -> bool:
    """Whether handling an event reads or changes the watch tables beyond its own watch's path:
    a move, a directory deleted (its `_vanished`), the queue overflowed, a watch gone
    (IGNORED, UNMOUNT, DELETE_SELF, MOVE_SELF)."""
    return bool(mask & ~_PLAIN) or (Mask.DELETE | Mask.ISDIR) in mask


class Watcher(RootWatching, TreeWatches):
    """Watches a tree with inotify and sends batches of FsEvents.

    Args:
        root: the directory to watch.
        path_filter: events for paths it rejects (and temporary names) are not reported, but
            for the close-write of an O_TMPFILE's anonymous name ("#<inode>"), whose real names
            the recorder finds and judges.
        unwatched_scan_interval_s: how often directories beyond the inotify watch limit are
            reported as "rescan".

    Error handling: when the kernel's watch limit is reached, a warning names the fix once, and
    the directories left unwatched are reported as "rescan" every unwatched_scan_interval_s
    (their watches are retried then too). A queue overflow re-adds watches for the whole tree
    and reports "rescan" of "". A root deleted, moved away or unmounted (IN_DELETE_SELF,
    IN_MOVE_SELF, IN_UNMOUNT, or its watch IN_IGNORED) is lost: its watches go, "rescan" of ""
    is reported, and every ROOT_POLL_S it is looked for; once back, it is watched and rescanned.
    So is a root whose path shows another directory (a symlink switched, a file system mounted
    over it); one whose bind mount went is lost (`_root.RootWatching`). A file system unmounted
    below the root has its directory rescanned and watched again.

    Resource handling: the inotify descriptor lives as long as `serve()` and is closed on exit.
    Subtrees are listed and watched in worker threads (`TreeWatches`), one at a time: a tree of
    many directories, or one on a hung network mount, holds up this Watcher only, never the
    event loop; a stop abandons the thread, which ends at its next directory.
    """

    def __init__(
        self,
        root: Path,
        path_filter: PathFilter,
        *,
        unwatched_scan_interval_s: float = UNWATCHED_SCAN_INTERVAL_S,
    ) -> None:
        TreeWatches.__init__(self, root, path_filter, unwatched_scan_interval_s)
        self._batch: list[FsEvent | PendingFrom] = []
        self._batch_read = 0  # inotify events read into the current batch
        self._cookies: dict[int, PendingFrom] = {}
        # The watches of (and below) a directory moved from, while its MOVED_TO is awaited: what
        # they report meanwhile is of a directory no longer at its label (`_handle`).
        self._moving: set[int] = set()
        # MODIFY without a CLOSE_WRITE (truncate(2), writes through a long-open fd or mmap, a
        # writer that paused), and regular files created with neither since (`_created`):
        # path -> monotonic time of its last MODIFY (or CREATE), reported as "modify" once quiet.
        self._modified: dict[str, float] = {}
        self._presence = RootPresence(root)

    @property
    def unwatched(self) -> list[str]:
        """Directories (with their subtrees) that have no watch because of the watch limit."""
        return list(self._unwatched)

    async def serve(
        self,
        send: anyio.abc.ObjectSendStream[list[FsEvent]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch until cancelled, sending one coalesced list of events per batch read."""
        with Inotify(cache_size=INOTIFY_READ_EVENTS, sync_timeout=0) as ino:
            self._ino = ino
            try:
                self._queue_tree("")
                await self._watch_queued()  # nothing else touches the tables before the tasks start
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._scan_unwatched, send)
                    tg.start_soon(self._report_quiet_modified, send)
                    tg.start_soon(self._watch_root_return, send)
                    task_status.started()
                    await self._read_loop(send)
            finally:
                self._ino = None
                self._paths.clear()
                self._wds.clear()
                self._watches.clear()
                self._parked.clear()

    async def _scan_unwatched(self, send: anyio.abc.ObjectSendStream[list[FsEvent]]) -> None:
        while True:
            await anyio.sleep(self._interval_s)
            if not self._unwatched and not self._unreadable:
                continue
            async with self._tables:
                dirs = list(self._unwatched)
                self._unwatched.clear()
                for rel in dirs:
                    self._queue_tree(rel)  # the limit may have been raised meanwhile
                # made readable by what leaves no ATTRIB on them (a group, a parent's ACL)
                retried = self._retry_unreadable("")
                await self._watch_queued()
                # rescanned once watched: what changed in them meanwhile was not seen
                dirs += [r for r in retried if r in self._wds and r not in self._unreadable]
            if dirs:
                await send.send([FsEvent(kind="rescan", path=rel, is_dir=True) for rel in dirs])

    async def _report_quiet_modified(self, send: anyio.abc.ObjectSendStream[list[FsEvent]]) -> None:
        """Report files modified (or created) without a close-write once no MODIFY came for
        MODIFY_QUIET_S, as "modify", not as closed: the writer may only have paused, its file
        still open (the source holds such a file while some process has it open for writing)."""
        while True:
            await anyio.sleep(MODIFY_QUIET_S / 2)
            now = time.monotonic()
            quiet = [p for p, t in self._modified.items() if now - t >= MODIFY_QUIET_S]
            for path in quiet:
                del self._modified[path]
            if quiet:
                await send.send([FsEvent(kind="modify", path=p) for p in quiet])

    # --- reading ---

    async def _read_loop(self, send: anyio.abc.ObjectSendStream[list[FsEvent]]) -> None:
        assert self._ino is not None
        full = False
        while True:
            if full:  # more may wait in asyncinotify's buffer, which the fd does not show
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.wait_readable(self._ino.fd)
            async with self._tables:
                full, events = await self._read_batch()
            if events:
                await send.send(events)

    async def _read_batch(self) -> tuple[bool, list[FsEvent]]:
        """Read one batch; return whether it stopped full, and its events."""
        assert self._ino is not None
        started = time.monotonic()
        root_changes = self._presence.changes
        full = await self._drain()
        while (wait_s := self._pairing_wait_s(started)) > 0:
            if not full:
                with anyio.move_on_after(wait_s):
                    await anyio.wait_readable(self._ino.fd)
            # a full batch still reads on for its pending MOVED_FROMs' MOVED_TOs: cut between
            # them, `mv d e` would reach the targets as a delete of d and a rescan of e
            full = await self._drain(pairing=True)
        checked = (self._batch_removes() or self._presence.lost) and await self._root_answers()
        events = self._batch_events(root_changes, checked=checked)
        await self._watch_queued()  # a root back or replaced is watched before its rescan goes
        return full, events

    def _pairing_wait_s(self, started: float) -> float:
        """How much longer the batch waits for the MOVED_TOs of its pending MOVED_FROMs.

        Until every pending one was read MOVE_PAIR_S ago, whatever else arrives meanwhile (a
        file moved out of a busy tree must not hold back the events around it), and never
        past PAIR_BATCH_MAX_S (new moves out keep coming): a MOVED_FROM left unpaired is a
        delete, and its MOVED_TO, if it comes after all, a rescan.
        """
        if not self._cookies:
            return 0.0
        newest = max(pending.read_at for pending in self._cookies.values())
        return min(newest + MOVE_PAIR_S, started + PAIR_BATCH_MAX_S) - time.monotonic()

    async def _drain(self, *, pairing: bool = False) -> bool:
        """Read the queued inotify events into the batch; return True if it stopped full (more
        may be queued), False once none is left.

        A batch is full at BATCH_MAX_EVENTS: writers faster than this loop must not keep one
        batch (and the event loop) to themselves for ever. With `pairing`, a full batch reads on
        while a MOVED_FROM of it waits for its MOVED_TO (bounded by the caller's pairing wait).
        The subtrees events queued (`_queue_tree`) are watched, in one worker thread, before an
        event that reads the tables is handled (`_reads_tables`), which then finds them there as
        if they had been watched on the spot, and at the latest once the drain stops.
        """
        assert self._ino is not None
        full = False
        while not full and (event := self._ino.sync_get()) is not None:
            if self._to_watch and _reads_tables(event.mask):
                await self._watch_queued()
            self._batch_read += 1
            self._handle(event)
            full = self._batch_read >= BATCH_MAX_EVENTS and not (pairing and self._cookies)
        await self._watch_queued()
        return full

    def _batch_events(self, root_changes: int, *, checked: bool = True) -> list[FsEvent]:
        """The batch read, coalesced; none if the root's path showed another directory meanwhile
        (a switched `current` link: the batch may be the old release's `rm -rf`), only a
        rescan of "" (the one the change is due, or once more if `_overflow` acted on the change
        while the batch was read: a rescan costs a scan, a batch lost would cost changes)."""
        if (checked and self._check_root()) or self._presence.changes != root_changes:
            self._drop_batch()
            return [FsEvent(kind="rescan", path="", is_dir=True)]
        return coalesce(self._finish_batch(), keep_closed=True)  # closed: see `coalesce`

    def _batch_removes(self) -> bool:
        """Whether the batch holds a delete or a move, the changes that must not reach the
        targets if the root's path shows another directory than the one they happened in (the
        old release's `rm -rf` after a link switch). Writes, attributes and rescans are read
        back from the root's path as it is, so a batch of those goes on without the root's
        check, which costs a worker thread's round trip (0.12-0.15 ms) per batch. A batch in
        which the root was lost is checked too (see `_read_loop`): the old release moved away
        right after a switch leaves a lost root and a rescan, and the check finds the release
        now current at the path instead of holding the rescan's deletes as a missing folder's."""
        return any(
            not isinstance(item, FsEvent) or item.kind in ("delete", "move") for item in self._batch
        )

    def _drop_batch(self) -> None:
        self._batch = []
        self._batch_read = 0
        self._cookies.clear()
        self._moving.clear()
        self._remove_parked()  # not taken by an exchange's second half: replaced, gone

    def _finish_batch(self) -> list[FsEvent]:
        out: list[FsEvent] = []
        rescans: list[str] = []
        for item in self._batch:
            if isinstance(item, FsEvent):
                out.append(item)
            elif not item.paired:
                self._moved_out(item, out, rescans)
        self._drop_batch()
        # after the batch's own events: a `move staging d` of it comes before the rescan of d
        out += [FsEvent(kind="rescan", path=rel, is_dir=True) for rel in rescans]
        return out

    def _moved_out(self, item: PendingFrom, out: list[FsEvent], rescans: list[str]) -> None:
        """A MOVED_FROM left unpaired: the directory went out of the tree, and its watches with
        it (they would report what happens to it out there under its old path: an archived
        release's `rm -rf` as deletes of the live files).

        Exactly its own watches go, those it had when its MOVED_FROM was read, not those at its
        path now: a directory there again by now (`mv d /archive; mkdir d`, `mv d /archive; mv
        staging d`, all in this batch) was watched, and is rescanned, as its own event came.
        A directory the kernel watches at that path by now but this Watcher did not is watched
        and rescanned (`rescans`).
        """
        if item.is_dir:
            rescans += [r for r in self._unwatch_moved_out(item.path, item.wds) if item.accepted]
        if item.accepted:
            out.append(FsEvent(kind="delete", path=item.path, is_dir=item.is_dir))

    def _emit(
        self, kind: EventKind, path: str, *, is_dir: bool = False, new_path: str = ""
    ) -> None:
        self._batch.append(FsEvent(kind=kind, path=path, new_path=new_path, is_dir=is_dir))

    # --- one inotify event ---

    def _handle(self, event: Event) -> None:
        mask = event.mask
        if Mask.Q_OVERFLOW in mask:
            self._overflow()
            return
        watch = event.watch
        if watch is None:
            return
        if Mask.IGNORED in mask:
            if self._paths.get(watch.wd) == "":  # not removed by us: its file system went
                self._lose_root(unmounted=True)
            self._drop_watch(watch.wd)
            self._parked.pop(watch.wd, None)
            return
        base = self._paths.get(watch.wd)
        if base is None or watch.wd in self._moving:  # not in the tree, or not known where
            return
        if Mask.UNMOUNT in mask:
            self._unmounted(base)
        elif event.name is None:
            self._self_event(base, mask)
            return
        self._child_event(join(base, str(event.name)), mask, event.cookie)

    def _overflow(self) -> None:
        logger.warning("inotify queue overflowed under %s: rescanning the whole tree", self._root)
        self._vanished.clear()
        # a root switched since the last look is watched anew (`_check_root`), or the old
        # release's watches would stay and the root's be added on the new one beside them
        if not self._check_root() and not self._presence.lost:
            self._queue_tree("")
        self._emit("rescan", "", is_dir=True)

    def _drop_watch(self, wd: int) -> None:
        self._watches.pop(wd, None)
        rel = self._paths.pop(wd, None)
        if rel is not None and self._wds.get(rel) == wd:
            del self._wds[rel]

    def _child_event(self, rel: str, mask: Mask, cookie: int) -> None:
        is_dir = Mask.ISDIR in mask
        if Mask.MOVED_FROM in mask:
            self._moved_from(rel, is_dir, cookie)
        elif Mask.MOVED_TO in mask:
            self._moved_to(rel, is_dir, cookie)
        elif not self._filter.accepts(rel, is_dir=is_dir):
            if "#" in rel and Mask.CLOSE_WRITE in mask and anonymous_inode(rel) is not None:
                self._emit("write", rel)  # an O_TMPFILE: the recorder judges the names it has
        elif Mask.CREATE in mask:
            self._created(rel, is_dir)
        elif Mask.MODIFY in mask and not is_dir:
            self._modified[rel] = time.monotonic()
        else:
            if mask & (Mask.CLOSE_WRITE | Mask.DELETE):
                self._modified.pop(rel, None)
            if is_dir and Mask.DELETE in mask:
                self._drop_vanished(rel)
            for bit, kind in _SIMPLE.items():
                if bit in mask:
                    self._emit(kind, rel, is_dir=is_dir)
            if is_dir and Mask.ATTRIB in mask:  # a chmod may make it readable: watched, rescanned
                for top in self._retry_unreadable(rel):
                    self._emit("rescan", top, is_dir=True)

    def _created(self, rel: str, is_dir: bool) -> None:
        if is_dir:
            self._queue_tree(rel)
            self._emit("rescan", rel, is_dir=True)
            return
        try:
            st = self._at_short_path(rel, os.lstat)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            self._emit("symlink", rel)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            # A new hard link: no CLOSE_WRITE follows here, and its content may still be written
            # through its other name (outside this folder: no event here). As "attr", not a
            # close-write: the source holds it while it is hot and open for writing elsewhere.
            self._emit("attr", rel)
        elif stat.S_ISREG(st.st_mode):
            # Maybe opened for writing (its CLOSE_WRITE reports it, and drops it here), maybe
            # not: a link whose other name is gone by now (`ln tmp/x new/x; rm tmp/x`, maildir
            # delivery), open(O_CREAT|O_RDONLY), mknod. Those get no other event: reported
            # once quiet, as a MODIFY without close-write is (`_report_quiet_modified`).
            self._modified.setdefault(rel, time.monotonic())

    def _moved_from(self, rel: str, is_dir: bool, cookie: int) -> None:
        pending = PendingFrom(rel, is_dir, self._filter.accepts(rel, is_dir=is_dir))
        if is_dir:
            pending.wds = self._tree_wds(rel)
            pending.parked = self._parked_below(rel)
            self._moving |= pending.wds
        self._cookies[cookie] = pending
        self._batch.append(pending)

    def _moved_to(self, rel: str, is_dir: bool, cookie: int) -> None:
        accepted = self._filter.accepts(rel, is_dir=is_dir)
        pending = self._cookies.pop(cookie, None)
        if pending is None:
            self._arrived(rel, is_dir, accepted)
            return
        pending.paired = True
        if is_dir:
            self._moving -= pending.wds
            self._move_tree(pending.path, rel, self._moved_wds(pending, rel, accepted))
        if pending.accepted and accepted:
            self._emit("move", pending.path, new_path=rel, is_dir=is_dir)
            if is_dir:
                self._watch_moved(pending.path, rel)
        elif pending.accepted:
            if is_dir:
                self._forget_tree(rel, remove=True)
                self._drop_vanished(pending.path)
            self._emit("delete", pending.path, is_dir=is_dir)
        elif accepted:
            self._arrived(rel, is_dir, accepted)

    def _moved_wds(self, pending: PendingFrom, new: str, accepted: bool) -> set[int]:
        """The watches that went with the directory moved to `new`, as the kernel tells (the
        watch it gives for `new`): those at its path when its MOVED_FROM was read, or those a
        move earlier in the batch parked there (an exchange's second half: `mv --exchange a b`
        is a->b, b->a), or none when neither is on it (`mkdir n; mv n m; mkdir n`: the CREATE's
        walk watched the second n before the MOVED_FROM was read), and `_watch_moved` watches
        it anew. If no directory is at `new` by now, those at its path when it moved went; a
        rejected `new` is not asked (its watches go: `_forget_tree`), nor watched by asking."""
        wd = self._kernel_wd(new) if accepted else None
        if wd is None or wd in pending.wds:
            return pending.wds
        if wd in pending.parked:
            return pending.parked
        return set()

    def _watch_moved(self, old: str, new: str) -> None:
        """Watch what a directory move left unwatched (`mktemp -d; fill; mv tmp release`).

        A directory renamed before its CREATE (or a CREATE inside it) was read had its watch
        tried under the old name, already gone (`_vanished`); `_move_tree` only relabels the
        watches that exist. Whatever was created in it before the new watch is found by the
        rescan, as for a new directory.
        """
        lost = [p for p in self._vanished if under(p, old)]
        for path in lost:
            del self._vanished[path]
        tops = [new + p[len(old) :] for p in lost]
        if new not in self._wds and new not in self._unwatched and new not in tops:
            tops.append(new)
        for top in tops:
            self._queue_tree(top)
            self._emit("rescan", top, is_dir=True)

    def _arrived(self, rel: str, is_dir: bool, accepted: bool) -> None:
        if not accepted:
            return
        if is_dir:
            self._queue_tree(rel)
        self._emit("rescan", rel, is_dir=is_dir)
