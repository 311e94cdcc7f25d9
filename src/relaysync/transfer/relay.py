"""Relay forwarding: a target that streams a mapping's changes on to its children in the tree.

The master's routing table (MappingSpec.routes) gives each node its parent. A relay's peer
server spools its parent's stream as it arrives (transfer/spool.py) and a `RelayLink` per child
streams the spool on, so a child gets the first chunks of a file before the relay has the last
ones. A child the spool does not cover (new in the tree, or far behind) first gets a manifest
comparison against the relay's own committed tree, like a source would run. The links stream
from the mapping's `RelayFeed` (transfer/relay_feed.py: the spool, the children's acks flowing
back up, the relay's committed mark).

A delta is forwarded as it came; a child that lacks the delta's base refuses it, and the relay
then sends that file whole from its own tree once it has committed it. A large file the child holds
in part (a partial it lists when the link opens) is forwarded from the first chunk it lacks
(transfer/relay_resume.py); where our parent resumed us, a child holding less gets the part
below our resume offset from our own copy. A version sent whole from our tree resumes the child's
partial of it too, and one that came as a delta goes that way instead of the delta when the child
holds more of it than the delta would save, as a source decides. File data (whole or delta)
crosses each hop in that hop's codec: a chunk that came in with another one is decoded and encoded
again on the way out, one that came in with the same one passes untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from relaysync.constants import CHUNK_BYTES, PING_INTERVAL_S, RECEIVE_TIMEOUT_S
from relaysync.errors import SpoolReset
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import (
    AnyMessage,
    Checkpoint,
    Delete,
    DeltaStart,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    MappingState,
    Partial,
    PartialRef,
    Ping,
    Rename,
    SmallFile,
)
from relaysync.transfer import ops, recoding
from relaysync.transfer._link_session import _Session
from relaysync.transfer._record_stream import BATCH_BYTES
from relaysync.transfer.relay_feed import RelayFeed
from relaysync.transfer.relay_resume import ResumeCut, open_prefix, prefix_messages
from relaysync.transfer.relay_retried import StreamHead
from relaysync.transfer.sender import TargetLink

logger = logging.getLogger(__name__)

WAIT_RELAY_S = 0.5  # how often a child that is ahead of this relay re-checks it
CATCH_UP_STALL_S = RECEIVE_TIMEOUT_S * 10  # a child's wait for our parent, without progress


@dataclass
class RefusedDelta:
    """A version a relay sends a child whole from its tree, whose spooled messages it is dropping:
    a delta the child refused (it lacks the base), or a file our parent resumed us on that we hold
    no copy of below the resume offset for a child that lacks it."""

    seq: int = -1  # -1: none
    path: str = ""
    changed_at: float = 0.0

    def clear(self) -> None:
        self.seq, self.path, self.changed_at = -1, "", 0.0


class RelayLink(TargetLink):
    """Streams a relay's spool to one child (TargetLink's session, handshake and catch-up)."""

    source: RelayFeed  # type: ignore[assignment]  # a SourceFolder but for the journal (only its id is used)

    def current_route(self) -> tuple[str, ...]:
        return (*self.source.folder.route, self.name)

    async def _open(self) -> tuple[FramedStream, MappingState]:
        # Nothing to relay before our parent has told us which source journal it streams.
        while not self.source.spool.journal_id:
            await self.source.wait_for_records(0, WAIT_RELAY_S)
        return await super()._open()

    async def _stream(self, session: _Session, state: MappingState, tg: TaskGroup) -> None:
        feed, spool = self.source, self.source.spool
        session.acked = session.sent_upto = state.watermark
        # What the child holds in part: a comparison resumes from our tree, _forward from the spool.
        self.options.resume = {(p.path, p.hash): p.size for p in state.partials}
        session.partials = state.partials
        self.connected = True
        await self._tell_unreadable(session)
        resets = spool.resets
        await self._catch_up(session, state.watermark)
        compare_due = anyio.current_time() + self.compare_interval_s
        position, generation = spool.start, spool.generation  # a reset from here: the first read
        if spool.resets != resets:  # our parent's comparison during the catch-up: a comparison
            # of ours may have missed its work; the next session looks again (`Spool.covers`)
            raise SpoolReset("our parent's comparison restarted it during the child's catch-up")
        head = StreamHead(spool.base or 0)  # the seq the stream is at where we start reading
        refused = RefusedDelta()  # a refused delta's messages can span several spool reads
        cut = ResumeCut()  # so can those of a file cut to what the child lacks
        self.log.info("relaying to %s from seq %s", self.target.name, session.sent_upto)
        while True:
            await self._tell_unreadable(session)
            messages, position = await anyio.to_thread.run_sync(
                spool.read, position, generation, BATCH_BYTES
            )
            if messages:
                await self._forward(session, messages, refused, cut, head)
                continue
            # A comparison from here is only sound once our tree holds all we forwarded.
            if (
                anyio.current_time() >= compare_due
                and session.acked >= session.sent_upto
                and feed.committed >= session.sent_upto
            ):
                await self._catch_up_by_compare(session)
                compare_due = anyio.current_time() + self.compare_interval_s
                continue
            before = spool.end
            # Until the comparison is due too (once due but not possible yet, a ping's while).
            due_s = compare_due - anyio.current_time()
            wait_s = min(PING_INTERVAL_S, due_s) if due_s > 0 else PING_INTERVAL_S
            await feed.wait_for_records(session.sent_upto, wait_s)
            if spool.end == before:
                await session.framed.send(Ping())

    async def _catch_up(self, session: _Session, watermark: int) -> None:
        """Bring a child the spool does not cover up to our committed tree by comparison.

        Waiting for our parent ends in TimeoutError (a failed hop) only after CATCH_UP_STALL_S
        without progress of ours (what we committed, what we spooled): a fixed 600 s for the
        wait and the comparison together failed the hop of a child whose catch-up waited for a
        parent's long comparison, or made one of ten minutes. The comparison itself is bounded
        as every link's, by its messages' timeouts."""
        feed, spool = self.source, self.source.spool
        seen = (feed.committed, spool.end)
        stalled_at = anyio.current_time() + CATCH_UP_STALL_S
        while not spool.covers(session.sent_upto):
            base = spool.base  # read once: a reset in a worker thread sets it to None
            if feed.committed >= session.sent_upto and base is not None and feed.committed >= base:
                await self._catch_up_by_compare(session)
                return
            # The child is ahead of what we hold (it had another parent): wait for our parent.
            if (feed.committed, spool.end) != seen:
                seen = (feed.committed, spool.end)
                stalled_at = anyio.current_time() + CATCH_UP_STALL_S
            elif anyio.current_time() >= stalled_at:
                raise TimeoutError(
                    f"relay: no progress from our parent for {CATCH_UP_STALL_S:.0f} s while a "
                    f"child waits for seq {session.sent_upto} (we committed {feed.committed})"
                )
            await feed.wait_for_records(session.sent_upto, WAIT_RELAY_S)
            await session.framed.send(Ping())

    async def _catch_up_by_compare(self, session: _Session) -> None:
        """Compare the child with our tree, once our parent told us what of the source's tree
        cannot be read now (our tree lacks it, and the child must keep it)."""
        while self.source.unreadable_pending:
            await self.source.wait_for_records(0, WAIT_RELAY_S)
            await session.framed.send(Ping())
        await super()._catch_up_by_compare(session)

    def _obsolete_partials(self, partials: Sequence[Partial], head: int) -> list[PartialRef]:
        """The child's partials whose version will never come through us (in a worker thread).

        Our tree (committed up to `head`, the spool all committed) holds no such version, and we
        receive none at that path: a version on its way to the child is on its way to us, so we
        hold a partial of it too. While the spool holds a batch we have not committed, nothing
        is dropped (its files may be the very versions); the next comparison looks again.
        """
        feed = self.source
        if not partials or not feed.spool.settled or feed.committed < feed.spool.head:
            return []
        receiving = feed.folder.partial_hashes()
        obsolete = []
        for p in partials:
            if p.path in receiving:
                continue
            entry = feed.manifest.get(p.path)
            if entry is None or entry.kind != "f" or entry.hash != p.hash:
                obsolete.append(PartialRef(path=p.path, hash=p.hash))
        return obsolete

    async def _forward(
        self,
        session: _Session,
        messages: list[AnyMessage],
        refused: RefusedDelta,
        cut: ResumeCut,
        head: StreamHead | None = None,
    ) -> None:
        """Send what of a spool read the child still needs; a refused delta goes as a whole file.

        The messages of a delta the child refused are dropped up to its end: at FileEnd the
        version goes whole from our tree; at FileAbort the source gave the delta up, and the
        whole version it sends next (SmallFile, or FileStart ... FileEnd) is forwarded as it is.
        A file the child holds in part goes from the first chunk it lacks (`cut`); one our parent
        resumed us on goes from what the child holds, the part below our offset from our copy.
        A Checkpoint is never dropped. `refused` and `cut` carry the file being dropped or cut
        from one spool read to the next (a 100 MiB file spans many), and `head` where the stream
        is: a file the source sent again under its old seq goes too (relay_retried.py).
        """
        after = session.sent_upto
        head = head or StreamHead()
        out: list[AnyMessage] = []
        for message in messages:
            seq = int(getattr(message, "seq", 0))
            if not head.sent_again(message, seq, after) and seq <= after:
                continue
            if seq == refused.seq:
                out = await self._drop_refused(session, message, out, refused)
                continue
            if cut.start is not None:
                if seq == cut.seq:
                    out.extend(cut.take(message))
                    continue
                out.extend(cut.flush())  # the file broke off without its end: the child sees that
            if isinstance(message, FileStart) and message.expected_hash:
                out = await self._start_file(session, message, out, refused, cut)
                continue
            if isinstance(message, DeltaStart) and (
                seq in self.options.whole_file_seqs
                or await self._resume_beats_delta(session, message)
            ):
                refused.seq, refused.path, refused.changed_at = (
                    seq,
                    message.path,
                    message.changed_at,
                )
                continue
            if isinstance(message, Rename) and message.hash and seq in self.options.whole_file_seqs:
                # The child lacked the version renamed: the old name goes (it may hold another
                # version there), the result whole.
                out.append(Delete(seq=seq, path=message.path, changed_at=message.changed_at))
                await self._send(session, out)
                out = []
                await self._whole_from_tree(session, seq, message.new_path, message.changed_at)
                continue
            out.append(message)
        await self._send(session, out)
        if cut.start is not None and not out:  # all dropped: the child hears from us all the same
            await session.framed.send(Ping())

    async def _drop_refused(
        self, session: _Session, message: AnyMessage, out: list[AnyMessage], refused: RefusedDelta
    ) -> list[AnyMessage]:
        """A message of the version the child refused: at its end the version goes from our tree.

        Returns what is still to go in this read's batch.
        """
        if isinstance(message, FileAbort):
            refused.clear()
        elif isinstance(message, FileEnd | Checkpoint):
            await self._send(session, out)
            out = [message] if isinstance(message, Checkpoint) else []
            seq, path, changed_at = refused.seq, refused.path, refused.changed_at
            refused.clear()
            await self._whole_from_tree(session, seq, path, changed_at)
        return out

    async def _start_file(
        self,
        session: _Session,
        start: FileStart,
        out: list[AnyMessage],
        refused: RefusedDelta,
        cut: ResumeCut,
    ) -> list[AnyMessage]:
        """A version the child may hold in part: cut it to what the child lacks, or, where our
        parent resumed us past what the child holds, complete it from our own copy.

        Returns what is still to go in this read's batch.
        """
        held = self.options.resume.pop((start.path, start.expected_hash), 0)
        if held > start.size or start.seq in self.options.whole_file_seqs:
            held = 0  # not this version, or the child found what it held was not
        if held == 0 and start.offset == 0:
            return [*out, start]
        if held >= start.offset:
            cut.begin(start, held)
            return out
        await self._send(session, out)
        if start.seq in self.options.whole_file_seqs or not await self._send_prefix(
            session, start, held
        ):
            # our copy is gone or was not this version: the version goes whole from our tree
            refused.seq, refused.path, refused.changed_at = start.seq, start.path, start.changed_at
        return []

    async def _resume_beats_delta(self, session: _Session, start: DeltaStart) -> bool:
        """Whether the child's partial of the delta's new version (a prefix of it: a cut delta's
        patched output, or a cut whole copy) is best resumed whole from our tree instead, as a
        source decides (ops._resume_sends_less): yes unless the delta that brought us that version
        was smaller than the rest. Waits until we have committed it, and so know that delta.
        """
        held = (
            self.options.resume.get((start.path, start.expected_hash), 0)
            if start.expected_hash
            else 0
        )
        if held < CHUNK_BYTES:
            return False
        await self._wait_committed(session, start.seq)
        delta = self.source.folder.delta_bytes(start.path, start.expected_hash)
        return delta is None or delta >= start.size - held

    async def _send_prefix(self, session: _Session, start: FileStart, held: int) -> bool:
        """Send `start` resuming at `held`, and the bytes up to where the spool's chunks begin
        from our own copy. Returns False, having sent nothing, if we hold no copy of it."""
        fd = await anyio.to_thread.run_sync(open_prefix, self.source.folder, start)
        if fd is None:
            return False
        self.log.info(
            "sending %s to %s from byte %s: bytes up to %s from our copy",
            start.path,
            self.target.name,
            held,
            start.offset,
        )
        try:
            await self._wait_window(session)
            await self._send_stream(session, prefix_messages(fd, start, held, self.options))
        finally:
            os.close(fd)
        return True

    async def _send(self, session: _Session, out: list[AnyMessage]) -> None:
        if not out:
            return
        await self._wait_window(session)
        await self._send_stream(session, self._outgoing(out))
        checkpoints = [m.seq for m in out if isinstance(m, Checkpoint)]
        if checkpoints:
            session.sent_upto = max(session.sent_upto, checkpoints[-1])

    def _outgoing(self, out: list[AnyMessage]) -> Iterator[AnyMessage]:
        """The spooled messages as this hop sends them: file data in this hop's codec (our parent's
        hop may run another) and in messages no larger than this hop's limit wants (recoding.split_chunk),
        a SmallFile streamed for a child of an older release.

        Runs in `_send_stream`'s worker thread, where the zstd work belongs.
        """
        codec, small_files = self.options.codec, self.options.small_files
        step = self.options.bandwidth.chunk_bytes(CHUNK_BYTES)  # this hop's limit, not our parent's
        for message in out:
            if isinstance(message, FileChunk) and len(message.data) > step:
                yield from recoding.split_chunk(message, step, codec)  # in this hop's codec too
                continue
            message = recoding.recoded(message, codec)
            if isinstance(message, SmallFile) and not small_files:
                yield from recoding.as_streamed(message)
            else:
                yield message

    async def _wait_committed(self, session: _Session, seq: int) -> None:
        """Until our tree holds `seq`, pinging the child meanwhile: as long as our parent's stream
        grows (a large file on a slow hop takes what it takes), else RECEIVE_TIMEOUT_S.

        Raises:
            TimeoutError: our parent's stream did not grow for RECEIVE_TIMEOUT_S.
        """
        feed = self.source
        grown, end = anyio.current_time(), -1
        while feed.committed < seq:
            if feed.spool.end != end:
                grown, end = anyio.current_time(), feed.spool.end
            elif anyio.current_time() - grown > RECEIVE_TIMEOUT_S:
                raise TimeoutError(
                    f"our parent sent nothing of seq {seq} for {RECEIVE_TIMEOUT_S} s"
                )
            await feed.wait_for_records(seq, WAIT_RELAY_S)
            await session.framed.send(Ping())

    async def _whole_from_tree(
        self, session: _Session, seq: int, path: str, changed_at: float = 0.0
    ) -> None:
        """Send the version `seq` wrote to `path` whole from our tree, once committed.

        Named by the hash our manifest holds for it, so a large one goes into the child's
        partial of that version and resumes from what it lists of it, as from a source.
        """
        feed = self.source
        await self._wait_committed(session, seq)
        entry = feed.manifest.get(path)
        version = entry.hash if entry is not None and entry.kind == "f" else b""
        self.log.info("sending %s whole to %s from our tree", path, self.target.name)
        options = ops.SendOptions(
            codec=self.options.codec,
            small_files=self.options.small_files,
            resume=self.options.resume,
            bandwidth=self.options.bandwidth,
        )
        await self._send_stream(
            session,
            ops.iter_file_messages(
                feed.root, path, seq, expected_hash=version, options=options, changed_at=changed_at
            ),
        )
