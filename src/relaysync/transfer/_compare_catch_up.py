"""A target link's catch-up by comparison: the source's manifest against the target's, top-down.

Run when the journal cannot replay what the target lacks, and periodically once replay has caught
up (the target may have lost or gained files). It sends the difference, checkpoints the journal
head, and removes the target's partials of versions that will never be sent (transfer/obsolete.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import anyio

from relaysync.protocol.messages import Partial, PartialRef
from relaysync.transfer import ops
from relaysync.transfer._link_session import _Session
from relaysync.transfer.compare import Work, compare_trees, iter_subtree
from relaysync.transfer.link_ends import SourceFolder, TargetAddress
from relaysync.transfer.moves import MovedAway
from relaysync.transfer.obsolete import closing_checkpoints, obsolete_partials
from relaysync.transfer.unreadable import UnreadableFiles
from relaysync.watch.manifest import Entry


class CompareCatchUp:
    """The comparison catch-up of a `TargetLink` (a mixin: the link holds the state it uses)."""

    source: SourceFolder
    target: TargetAddress
    options: ops.SendOptions
    unreadable: UnreadableFiles
    erase: bool
    log: logging.LoggerAdapter[logging.Logger]

    if TYPE_CHECKING:  # defined by `RecordStream` (transfer/_record_stream.py)

        async def _send_stream(
            self, session: _Session, messages: Iterator[ops.Outgoing]
        ) -> None: ...

    def _may_compare(self, session: _Session) -> bool:
        """Whether a comparison owed may run now. Realtime: at once. A held (manual/reserved)
        mapping compares against its manifest, which already holds the changes journaled after
        the last release: only at a release (send_limit past what the target holds) and while
        nothing newer is journaled, so that nothing unreleased goes; else at the next release."""
        source = self.source
        if source.realtime:
            return True
        return (
            source.send_limit > session.sent_upto and source.journal.last_seq <= source.send_limit
        )

    async def _catch_up_by_compare(self, session: _Session) -> None:
        """Compare manifests top-down and send the difference; then checkpoint the journal head."""
        head = self.source.applied_seq
        root, manifest = self.source.root, self.source.manifest

        session.moved = MovedAway()  # the comparison sends every file where it is now
        deferred = 0  # files left to their retry (unreadable when their change went)

        def send_entry(entry: Entry) -> Iterator[ops.Outgoing]:
            nonlocal deferred
            messages = ops.entry_messages(root, entry, self.options)
            if entry.kind != "f":
                yield from messages
            elif self.unreadable.defer(entry.path, entry.hash):
                deferred += 1
                return  # its retry sends it, after the comparison, under its record's seq
            elif (
                yield from self.unreadable.read(0, entry.path, (entry.hash, 0.0), messages)
            ) is False:
                session.moved.gone(
                    root, entry.path
                )  # moved during the comparison: its rename follows

        async def emit(work: Sequence[Work]) -> None:
            def produce() -> Iterator[ops.Outgoing]:
                for item in work:
                    if item.message is not None:
                        yield item.message
                    elif item.entry is not None:
                        yield from send_entry(item.entry)
                    elif item.subtree is not None:
                        for entry in iter_subtree(manifest, item.subtree):
                            yield from send_entry(entry)
                self.unreadable.flush_warnings()

            await self._send_stream(session, produce())

        unreadable = self.source.unreadable_now()
        if "" in unreadable.dirs:
            self.log.warning(
                "not comparing with %s: the source folder cannot be listed now", self.target.name
            )
        emitted = await compare_trees(
            manifest,
            session.request_listings,
            emit,
            erase=self.erase and unreadable.complete,  # not all known: erase nothing
            unreadable=unreadable,
        )
        obsolete = await anyio.to_thread.run_sync(self._obsolete_partials, session.partials, head)
        await session.framed.send_many(closing_checkpoints(head, obsolete))
        session.sent_upto = max(session.sent_upto, head)
        if obsolete:
            gone = {(ref.path, ref.hash) for ref in obsolete}
            session.partials = tuple(p for p in session.partials if (p.path, p.hash) not in gone)
            for key in gone:
                self.options.resume.pop(key, None)
            self.log.info(
                "%s holds %s partials of versions never to be sent: removing them",
                self.target.name,
                len(obsolete),
            )
        if emitted:
            self.log.info(
                "caught up %s by manifest comparison: %s items%s",
                self.target.name,
                emitted,
                f" ({deferred} files of them left to their retry)" if deferred else "",
            )

    def _obsolete_partials(self, partials: Sequence[Partial], head: int) -> list[PartialRef]:
        """The target's partials whose version we will never send (runs in a worker thread).

        The comparison just sent every version our manifest holds, and the target's watermark
        will be `head`, so a version is still to come only if the manifest holds it or a record
        journaled after `head` may send it: a partial at a path such a record writes, renames or
        moves (a directory above it) stays, as does every one while too many records are to be
        looked through. What is left was deleted here, or replaced by another version.
        """
        return obsolete_partials(self.source.journal, self.source.manifest, partials, head)
