"""A relay's feed: one mapping's relay role on an agent, the `SourceFolder` its `RelayLink`s stream from.

The relay's peer server spools its parent's stream (transfer/spool.py) and wakes the feed; the
feed holds what the links to its children need of it: the spool, the relay's committed mark, and
the source's unreadable paths as its parent told them (transfer/relay_unreadable.py).

Acknowledgements flow back up: the relay's Ack to its parent carries the watermarks of every
target below it, so the source keeps each change until every target has committed it; the
relay keeps its spool until its own children (and itself) have committed it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from relaysync.protocol.messages import (
    AnyMessage,
    Error,
    NodeMark,
    RouteHop,
    SourceUnreadable,
    nodes_below,
)
from relaysync.transfer._failures import TransientFailure
from relaysync.transfer.compare import Unreadable
from relaysync.transfer.relay_unreadable import KeptUnreadable
from relaysync.transfer.spool import Spool
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest

logger = logging.getLogger(__name__)


@dataclass
class _JournalRef:
    """What a link needs of a journal: its id (the source's, as our parent announced it)."""

    spool: Spool

    @property
    def journal_id(self) -> str:
        return self.spool.journal_id


class RelayFeed:
    """One mapping's relay role on this agent: its spool, its children's acks, its committed mark.

    Implements the `SourceFolder` protocol of transfer/link_ends.py for its RelayLinks.
    """

    realtime = True
    scanning = False  # a relay forwards what its parent sends: it has no first scan of its own

    def __init__(self, folder: TargetFolder, spool: Spool) -> None:
        self.folder = folder
        self.spool = spool
        self.mapping_id = folder.mapping_id
        self.root: Path = folder.root
        self.manifest: Manifest = folder.manifest
        self.journal = _JournalRef(spool)
        self.committed = folder.watermark(spool.journal_id) if spool.journal_id else 0
        self.children: frozenset[str] = frozenset()
        self.routes: tuple[
            RouteHop, ...
        ] = ()  # the mapping's table: whose marks a child's Ack may carry
        self.marks: dict[str, int] = {}  # node id -> watermark, for every target below us
        self._appended = anyio.Event()
        self.marks_changed = anyio.Event()  # the parent's session sends a fresh Ack on it
        # Our own route changed (a new parent): children's sessions name the old one, restart them.
        self.on_route_change: Callable[[], None] | None = None
        # The source's unreadable paths, as our parent last told them (kept on disk), and whether
        # our parent's session will tell them anew: a comparison with a child waits for that.
        # A spool our parent streamed to holds a journal id: a missing word there is unknown.
        self.unreadable = KeptUnreadable(spool.directory, streamed=bool(spool.journal_id))
        self.unreadable_pending = False

    # --- the parent's side (peer server) ---

    def spool_batch(self, batch: Sequence[AnyMessage]) -> Error | None:
        """Spool a batch of the parent's stream (worker thread); None, or the Error to answer
        the parent with if the spool could not take it (its disk full: DISK_FULL, as a target
        answers), so that it retries instead of seeing the link drop."""
        try:
            self.spool.append(batch)
        except TransientFailure as failure:
            logger.warning(
                "relay spool failed, parent will retry: seq=%s code=%s detail=%s",
                failure.seq,
                failure.code.name,
                failure.detail,
            )
            return Error(code=failure.code, detail=failure.detail, seq=failure.seq)
        return None

    def appended(self) -> None:
        """New messages are in the spool: wake the children's links (event loop thread)."""
        event, self._appended = self._appended, anyio.Event()
        event.set()

    async def learn_unreadable(self, message: SourceUnreadable) -> None:
        """Our parent told us the source's unreadable paths, after what came before in its
        stream, which we spooled first."""
        await anyio.to_thread.run_sync(self.unreadable.learn, message)  # it saves them
        self.expect_unreadable(False)

    async def parent_opens(self, tells: bool) -> None:
        """Our parent's session begins; it tells the source's unreadable paths first thing, or
        (an older release) never: then nothing is kept, as relays did before (a word kept from
        another parent would stay in force for ever)."""
        if not tells:
            await anyio.to_thread.run_sync(self.unreadable.forget)
        self.expect_unreadable(tells)

    def expect_unreadable(self, pending: bool) -> None:
        """Our parent's session begins and will tell them (True), or they were told, or it ended."""
        self.unreadable_pending = pending
        if not pending:
            self.appended()  # a child's link waiting to compare may go on

    def set_committed(self, watermark: int) -> None:
        if watermark > self.committed:
            self.committed = watermark
            self._release()
            self.appended()  # a child waiting for us to commit may go on

    def subtree(self) -> tuple[NodeMark, ...]:
        return tuple(NodeMark(node_id=n, watermark=w) for n, w in sorted(self.marks.items()))

    # --- SourceFolder protocol (for RelayLink) ---

    @property
    def applied_seq(self) -> int:
        """A comparison against our tree covers up to what we have committed."""
        return self.committed

    @property
    def send_limit(self) -> int:
        return self.spool.head

    async def wait_for_records(self, after_seq: int, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            await self._appended.wait()

    def below(self, child: str) -> frozenset[str]:
        return nodes_below(self.routes, child)

    def unreadable_now(self) -> Unreadable:
        """The source's paths there but unreadable, as our parent told us (relay_unreadable.py):
        our tree lacks what the source could not read, and a comparison with a child keeps them."""
        return self.unreadable.now

    def on_ack(self, target_node: str, watermark: int) -> None:
        # Forward only; `_Session._on_ack` passes only the child's own subtree (`below`).
        if watermark > self.marks.get(target_node, -1):
            self.marks[target_node] = watermark
            self._release()
            event, self.marks_changed = self.marks_changed, anyio.Event()
            event.set()

    def _release(self) -> None:
        """Keep the spool until every child (and this relay) has committed it."""
        if not self.children or any(c not in self.marks for c in self.children):
            return
        upto = min([self.marks[c] for c in self.children] + [self.committed])
        self.spool.release(upto)
