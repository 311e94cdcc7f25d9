"""A target link's streaming: journal records into messages, and messages into batches on the wire.

The source side of a session (transfer/sender.py) reads the journal in batches of BATCH_RECORDS,
each closed by a Checkpoint, and keeps at most WINDOW_RECORDS records sent but not acknowledged.
A record's file is read as it is now; one that moved before it could be sent is followed through
later renames (transfer/moves.py), and one that cannot be read is retried (transfer/unreadable.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio

from relaysync._util.fs import root_held
from relaysync.constants import RECEIVE_TIMEOUT_S
from relaysync.protocol.messages import AnyMessage, Checkpoint, Delete, FileChunk
from relaysync.transfer import ops
from relaysync.transfer._link_session import _Session
from relaysync.transfer.link_ends import SourceFolder
from relaysync.transfer.moves import MovedAway
from relaysync.transfer.pacing import send_paced
from relaysync.transfer.unreadable import UnreadableFiles
from relaysync.watch._coalesce_journal import coalesce_records
from relaysync.watch.changes import JournalRecord

BATCH_RECORDS = 256  # journal records per batch (one Checkpoint, one fsync batch on the target)
BATCH_BYTES = 8 * 1024 * 1024  # payload per send_many; larger files stream chunk by chunk
WINDOW_RECORDS = 8192  # records sent but not yet acknowledged before the sender waits


def whole_dirs(records: list[JournalRecord]) -> list[JournalRecord]:
    """A full batch of `records` cut before the last directory it makes, if half a batch stays:
    that directory's files then go in the next batch with it, whole, and the target writes them
    in the new directory at their own names (transfer/_new_dirs.py) instead of one temp file and
    one rename each (a first copy of 100 files a folder: 20 % of them were cut off their folder
    by a Checkpoint). The rest is read again for the next batch."""
    for i in range(len(records) - 1, BATCH_RECORDS // 2 - 1, -1):
        if records[i].op == "mkdir":
            return records[:i]
    return records


class RecordStream:
    """The record streaming of a `TargetLink` (a mixin: the link holds the state it uses)."""

    source: SourceFolder
    options: ops.SendOptions
    unreadable: UnreadableFiles

    async def _read_journal(self, session: _Session) -> list[JournalRecord]:
        """The next records to send: only what the manifest already reflects (a compare must never
        miss a record sent), and of what may go (a held mapping's release). A write that a later
        one in the batch supersedes is not sent: the file is read as it is now anyway, and the
        kept write's base is the version the target holds, so a large file written twice during
        a backlog goes once, as one delta.

        Raises:
            JournalGap: the journal released records after `session.sent_upto`.
        """
        records = await anyio.to_thread.run_sync(
            self.source.journal.read, session.sent_upto, BATCH_RECORDS
        )
        full = len(records) == BATCH_RECORDS
        records = [r for r in records if r.seq <= self.source.send_limit]
        return coalesce_records(whole_dirs(records) if full else records)

    async def _wait_window(self, session: _Session) -> None:
        while session.sent_upto - session.acked > WINDOW_RECORDS:
            event = session.ack_changed
            with anyio.fail_after(RECEIVE_TIMEOUT_S):
                await event.wait()

    async def _send_records(self, session: _Session, records: list[JournalRecord]) -> None:
        last = records[-1].seq

        def produce() -> Iterator[ops.Outgoing]:
            for record in records:
                yield from self._record_messages(session.moved, record)
            self.unreadable.flush_warnings()
            yield Checkpoint(seq=last)

        await self._send_stream(session, produce())
        session.sent_upto = last

    def _record_messages(self, moved: MovedAway, record: JournalRecord) -> Iterator[ops.Outgoing]:
        """A record's messages, following files that moved before they could be sent (moves.py)."""
        root = self.source.root
        match record.op:
            case "write":
                messages = ops.record_messages(root, record, self.options)
                sent = yield from self.unreadable.read_record(record, record.path, messages)
                self.unreadable.note(moved, root, record.path, sent)
            case "rename":
                yield from self._rename_messages(moved, record)
            case "delete":
                moved.forget(record.path)
                self.unreadable.forget(record.path)
                yield from ops.record_messages(root, record, self.options)
            case _:
                yield from ops.record_messages(root, record, self.options)

    def _rename_messages(self, moved: MovedAway, record: JournalRecord) -> Iterator[ops.Outgoing]:
        """A rename's messages: the Rename, or, if the target cannot hold the version renamed
        (it was not sent: moves.py; or the target said so, whole_file_seqs), the old name's
        Delete and the file whole at its new name; then the files it carried that were not sent."""
        root = self.source.root
        self.unreadable.moved(record.path, record.new_path, record.seq)  # read at the new name
        followed = moved.follow(record.path, record.new_path)
        is_file = record.entry is not None and record.entry.kind == "f"
        if is_file and (record.new_path in followed or record.seq in self.options.whole_file_seqs):
            # The old name goes too: the target may hold another version there.
            if record.new_path in followed:
                followed.remove(record.new_path)
            yield Delete(seq=record.seq, path=record.path, changed_at=record.time_ns / 1e9)
            self.options.whole_file_seqs.add(record.seq)
            messages = ops.record_messages(root, record, self.options)
            sent = yield from self.unreadable.read_record(record, record.new_path, messages)
            self.unreadable.note(moved, root, record.new_path, sent)
        else:
            yield from ops.record_messages(root, record, self.options)
        for path in followed:  # moved along with a directory above them
            yield from self._moved_file(moved, path)

    def _moved_file(self, moved: MovedAway, path: str) -> Iterator[ops.Outgoing]:
        """A file a rename carried away before it was sent, whole from where it is now."""
        entry = self.source.manifest.get(path)
        root = self.source.root
        if entry is None or entry.kind != "f":
            moved.gone(root, path)  # moved on, or deleted: a later record covers it
            return
        messages = ops.iter_file_messages(
            root, path, 0, expected_hash=entry.hash, options=self.options
        )
        sent = yield from self.unreadable.read(0, path, (entry.hash, 0.0), messages)
        self.unreadable.note(moved, root, path, sent)

    async def _send_stream(self, session: _Session, messages: Iterator[ops.Outgoing]) -> None:
        """Pull messages from a file-reading iterator in a worker thread and send them in batches.

        The next batch is read while the previous one is on the wire (one batch of read-ahead),
        so file I/O and the network overlap; memory stays bounded by three batches. Under a
        limit each message is paid for before it goes (transfer/pacing.py); unlimited, a batch
        goes in one `send_many`.
        """
        done = False
        limit = self.options.bandwidth

        def next_batch(max_bytes: int, rate: float) -> list[AnyMessage]:
            with root_held(self.source.root):  # the batch's files opened from one fd of it
                return fill_batch(max_bytes, rate)

        def fill_batch(max_bytes: int, rate: float) -> list[AnyMessage]:
            nonlocal done
            batch: list[AnyMessage] = []
            size = 0
            for message in messages:
                if isinstance(message, ops.Flush):  # the next message is not ready: send these now
                    if batch:
                        return batch
                    continue
                batch.append(message)
                size += ops.message_bytes(message)
                if size >= max_bytes or (
                    isinstance(message, FileChunk)
                    and (size >= max_bytes // 2 or limit.rate != rate)
                ):  # a window's edge: size anew
                    return batch
            done = True
            return batch

        ready_tx, ready_rx = anyio.create_memory_object_stream[list[AnyMessage]](1)

        async def read_ahead() -> None:
            async with ready_tx:
                while not done:
                    rate = limit.rate  # may change mid-file: a policy's time-of-day window
                    batch_bytes = (
                        min(BATCH_BYTES, max(65536, int(rate * 0.05))) if rate > 0 else BATCH_BYTES
                    )
                    batch = await anyio.to_thread.run_sync(next_batch, batch_bytes, rate)
                    if batch:
                        await ready_tx.send(batch)

        limit.begin()  # what the bucket saved up while we had nothing to send is not for us
        async with anyio.create_task_group() as tg, ready_rx:
            tg.start_soon(read_ahead)
            async for batch in ready_rx:
                if limit.limited:
                    await send_paced(session.framed, batch, limit, self.options.codec)
                else:
                    await session.framed.send_many(batch)
