"""The agent's peer server: accepts sources over mutual TLS and feeds their ops to receivers.

A session is accepted only from the node the routing table names as this folder's parent (the
source itself when there is no table) that is also a peer of the agent's latest assignment (a
revoked node is none: agent/_target_role.py); a session from a node that stops being a peer is
ended (`end_session_unless_from`). Where this agent relays the mapping to children, the
stream is spooled as it arrives (transfer/relay.py) and the Acks sent back up carry the
watermarks of the targets below.

Error handling: a client that fails the TLS handshake, is not the source of the mapping it asks
for, or sends a bad frame gets an Error (when the link still allows one) and is disconnected;
the server goes on serving others. Nothing it sent before a complete, verified op is applied.
Resource handling: one task per connection in the server's task group; a newer session for the
same (mapping, source) cancels the older one.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import ssl
from collections.abc import Callable, Collection, Sequence
from functools import partial

import anyio
from anyio.abc import TaskStatus

from relaysync._util.aio import is_link_error, leaf_error
from relaysync.constants import (
    CAP_RENAME_RESEND,
    CAP_SMALL_FILE,
    CAP_UNREADABLE,
    CAPABILITIES,
    CLOSE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    RECEIVE_TIMEOUT_S,
)
from relaysync.errors import FolderRefused, ProtocolError, RelaySyncError, RoutesStale, UnknownPeer
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import server_hello
from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    AuthChallenge,
    AuthResponse,
    Checkpoint,
    DigestRequest,
    Error,
    Hello,
    MappingState,
    OpenMapping,
    Ping,
    Pong,
    SmallFile,
    SourceUnreadable,
)
from relaysync.transfer import tls
from relaysync.transfer.conflicts import session_for
from relaysync.transfer.receiver import ReceiverSession, ReportFn
from relaysync.transfer.relay_feed import RelayFeed
from relaysync.transfer.target_folder import TargetFolder

from ._peer_refusals import routes_stale, try_send_error
from ._read_ahead import ReadAhead, keep_sender_waiting

logger = logging.getLogger(__name__)

APPLY_BATCH_BYTES = 8 * 1024 * 1024  # apply what has arrived once this much data is buffered
APPLY_BATCH_MESSAGES = 1024
RELAY_BATCH_BYTES = 1024 * 1024  # a relay spools (and so forwards) at least every chunk
ACK_FOLD_S = 0.005  # a relay lets a burst of its children's acks fold into one Ack upstream
# A plain-link MAC of another routing epoch is taken for a route change in flight (RoutesStale,
# logged at info) this many times in a row at most; from then on it is an authentication failure.
# At the senders' retries of such refusals (20 ms, doubling to 2 s: _stale_routes.py) the 9th
# comes about 4.5 s after the first: a route change settles well within that.
MAC_FAILURES_WARNED = 9
MAC_FAILURE_KEYS = 1024  # (mapping, claimed sender) pairs counted at most

FolderLookup = Callable[[int], TargetFolder | None]
# A target folder this agent refused (agent/guard.py), and the parents that may be told why.
RefusalLookup = Callable[[int], tuple[FolderRefused, frozenset[str]] | None]
RelayLookup = Callable[[int], RelayFeed | None]
ReportFactory = Callable[[TargetFolder, str], ReportFn]  # (folder, source journal id)


class PeerServer:
    """Serves this agent's target folders to their sources."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ctx: ssl.SSLContext,
        node_id: str,
        name: str,
        folders: FolderLookup,
        reporter: ReportFactory,
        relays: RelayLookup | None = None,
        refuse: frozenset[str] = frozenset(),
        capabilities: tuple[str, ...] = CAPABILITIES,
        refusals: RefusalLookup | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.ctx = ctx
        self.node_id = node_id
        self.name = name
        self.folders = folders
        self.reporter = reporter
        self.relays: RelayLookup = relays or (lambda _mapping_id: None)
        self.refuse = refuse  # peer names refused outright (a firewall rule; used by tests)
        self.capabilities = capabilities  # announced in our Hello; a peer may use only these
        self.refusals: RefusalLookup = refusals or (lambda _mapping_id: None)
        self._active: dict[int, anyio.CancelScope] = {}
        self._streams: dict[int, FramedStream] = {}  # the mapping's current session's stream
        self._ended: dict[int, anyio.Event] = {}  # set when the mapping's current session is over
        self._senders: dict[int, str] = {}  # who sends the mapping's current session (its node id)
        self.refused = 0
        self._mac_failures: dict[tuple[int, str], int] = {}  # plain-link MACs failed in a row

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; reports the bound port when ready."""
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                partial(
                    tls.serve_tls,
                    self.host,
                    self.port,
                    self.ctx,
                    self._handle,
                    plain_handler=self._handle_plain,
                )
            )
            logger.info("peer server listening on %s:%s", self.host, port)
            task_status.started(port)

    async def _handle(self, framed: FramedStream) -> None:
        await self._serve_connection(framed, tls.peer_node_id(framed), tls.peer_address(framed))

    async def _handle_plain(self, framed: FramedStream) -> None:
        await self._serve_connection(framed, None, tls.peer_address(framed))

    async def _serve_connection(self, framed: FramedStream, peer: str | None, address: str) -> None:
        """Run one session; peer is the TLS-proven node id, or None on a plain link."""
        try:
            await self._session(framed, peer, address)
        except Exception as group:
            if not is_link_error(group):
                # A bug must cost this session, not the server that serves every other peer.
                logger.exception("peer session failed unexpectedly; closing it")
                return
            exc = leaf_error(group)
            self.refused += isinstance(exc, ProtocolError | UnknownPeer)
            if isinstance(exc, anyio.EndOfStream):
                logger.info("peer closed its session")
            elif isinstance(exc, RoutesStale):  # a route change in flight: the peer retries
                logger.info("peer session refused: %s", exc)
            else:
                logger.warning("peer session ended: %s: %s", type(exc).__name__, exc)
            if isinstance(exc, RelaySyncError):
                await try_send_error(framed, exc)
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()

    async def _session(self, framed: FramedStream, peer: str | None, address: str) -> None:
        with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
            hello = await server_hello(
                framed,
                node_id=self.node_id,
                name=self.name,
                role="agent",
                capabilities=self.capabilities,
            )
            opened = await framed.receive()
            if not isinstance(opened, OpenMapping):
                raise ProtocolError("expected OpenMapping")
        if hello.name in self.refuse:
            raise UnknownPeer(f"{hello.name} is refused by this agent's configuration ({address})")
        folder = self.folders(opened.mapping_id)
        refusal = self.refusals(opened.mapping_id) if folder is None else None
        # On a plain link, by the id the sender claims: a refusal needs no proof (it opens nothing)
        if refusal is not None and (peer or hello.node_id) in refusal[1]:
            raise refusal[0]  # the source reports it to the master (HopFailed), naming the rule
        if peer is None:
            folder = await self._authenticate_plain(framed, hello, opened, folder, address)
            framed.allow_messages(MAX_MESSAGE_BYTES)
        elif (stale := routes_stale(hello, opened, folder, peer)) is not None:
            raise stale
        elif folder is None or peer not in folder.parents:
            raise UnknownPeer(
                f"{hello.name} ({peer[:16]}) is not the parent of mapping {opened.mapping_id} "
                f"here, from {address}"
            )
        if folder.route != opened.route:
            folder.route = opened.route
            feed = self.relays(opened.mapping_id)
            if feed is not None and feed.on_route_change is not None:
                feed.on_route_change()  # the children's sessions must carry the new route (job log)
        mapping_id = opened.mapping_id
        await self._take_over(mapping_id)  # one session per mapping: the newer one wins
        ended = anyio.Event()
        with anyio.CancelScope() as scope:
            self._active[mapping_id], self._ended[mapping_id] = scope, ended
            self._streams[mapping_id] = framed
            self._senders[mapping_id] = peer or hello.node_id  # on a plain link, proven by its MAC
            try:
                await self._receive(framed, folder, opened.journal_id, hello.capabilities)
            finally:
                if self._active.get(mapping_id) is scope:
                    del self._active[mapping_id], self._ended[mapping_id], self._streams[mapping_id]
                    del self._senders[mapping_id]
                ended.set()

    async def _authenticate_plain(
        self,
        framed: FramedStream,
        hello: Hello,
        opened: OpenMapping,
        folder: TargetFolder | None,
        address: str,
    ) -> TargetFolder:
        """A plain link is allowed only where the policy turned TLS off, and only to the source
        that proves it holds the link secret. A sender of another routing epoch is refused as
        RoutesStale, as on a TLS link; a wrong MAC under our epoch is an UnknownPeer."""
        claimed = hello.node_id
        stale = routes_stale(hello, opened, folder, claimed, proven=False)
        if stale is not None:  # refused before the challenge: a refusal needs no proof
            raise stale
        if folder is None or claimed not in folder.parents:
            raise UnknownPeer(f"{claimed[:16]} for mapping {opened.mapping_id} from {address}")
        if not folder.link_secret:
            raise UnknownPeer(
                f"{claimed[:16]} without TLS: this link's policy requires TLS ({address})"
            )
        nonce = secrets.token_bytes(32)
        with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
            await framed.send(AuthChallenge(nonce=nonce))
            response = await framed.receive()
        expected = tls.link_mac(folder.link_secret, nonce, opened.mapping_id, claimed, self.node_id)
        key = (opened.mapping_id, claimed)
        if isinstance(response, AuthResponse) and hmac.compare_digest(response.mac, expected):
            self._mac_failures.pop(key, None)
            return folder
        failures = self._note_mac_failure(key)
        if opened.route_epoch != folder.route_epoch and failures < MAC_FAILURES_WARNED:
            # Our parent here, holding the secret of the hop its own (older or newer) table
            # names: a route change in flight, refused all the same, but no failed hop. (Our
            # epoch is not told: the sender has proven nothing.) Past a few in a row, it is no
            # route change: an authentication failure, as any other.
            raise RoutesStale(
                opened.mapping_id,
                f"{hello.name} runs routing epoch {opened.route_epoch} and its link secret is "
                "not this hop's in ours",
            )
        raise UnknownPeer(
            f"{claimed[:16]} failed plain-link authentication from {address} "
            f"({failures} times in a row)"
        )

    def _note_mac_failure(self, key: tuple[int, str]) -> int:
        """Count a failed plain-link MAC of (mapping, claimed sender), bounded in entries."""
        if key not in self._mac_failures and len(self._mac_failures) >= MAC_FAILURE_KEYS:
            self._mac_failures.pop(next(iter(self._mac_failures)))
        self._mac_failures[key] = self._mac_failures.get(key, 0) + 1
        return self._mac_failures[key]

    async def restart_session(
        self, mapping_id: int, reason: str = "this target's relay role changed"
    ) -> None:
        """End the mapping's session (its parent reconnects at once): it starts or stops relaying,
        or its link secret changed. The parent is told first (ROUTES_STALE), so that it retries
        quietly instead of reporting a failed hop: two role changes without traffic in between
        made the master plan around a healthy hop."""
        framed = self._streams.get(mapping_id)
        if framed is not None:
            await try_send_error(framed, RoutesStale(mapping_id, f"{reason}: reconnect"))
        await self._end_session(mapping_id)

    async def end_session_unless_from(self, mapping_id: int, senders: Collection[str]) -> None:
        """End the mapping's session if its sender is none of `senders` (the agent's peers in its
        latest assignment): a node revoked, or out of the mapping, must not go on writing on a
        session opened before. It hears UNKNOWN_PEER, and is refused as such if it comes back."""
        sender, framed = self._senders.get(mapping_id), self._streams.get(mapping_id)
        if sender is None or framed is None or sender in senders:
            return
        logger.warning(
            "mapping %s: ending the session of %s, no peer of this agent any more",
            mapping_id,
            sender[:16],
        )
        reason = f"{sender[:16]} is no peer of this agent any more (mapping {mapping_id})"
        await try_send_error(framed, UnknownPeer(reason))
        await self._end_session(mapping_id)

    async def _take_over(self, mapping_id: int) -> None:
        """End the mapping's sessions before this one, and wait until they have let go.

        Again after each: two successors that waited for the same session both woke when it
        ended, and the second replaced the first in `_active` without ending it, which went on
        receiving beside it (its partials open) until its link timed out.
        """
        stuck: list[anyio.CancelScope] = []  # sessions that did not end in time
        while (scope := self._active.get(mapping_id)) is not None and scope not in stuck:
            if not await self._end_session(mapping_id):
                # Its thread is still busy: go ahead, each partial's lock keeps the two apart;
                # but not beside another successor that went ahead meanwhile (ended in turn).
                logger.warning(
                    "the session before did not end within %s s; mapping %s goes ahead",
                    RECEIVE_TIMEOUT_S,
                    mapping_id,
                )
                stuck.append(scope)

    async def _end_session(self, mapping_id: int) -> bool:
        """Cancel the mapping's current session, if any, and wait until it has let go (its files
        closed: `_receive` closes them, shielded). False if it had not within RECEIVE_TIMEOUT_S."""
        scope, ended = self._active.get(mapping_id), self._ended.get(mapping_id)
        if scope is None or ended is None:
            return True
        scope.cancel()
        with anyio.move_on_after(RECEIVE_TIMEOUT_S):
            await ended.wait()
        return ended.is_set()

    async def retire(self, folder: TargetFolder, *, keep_partials: bool = False) -> None:
        """Stop serving a folder (mapping removed or moved): end its session, remove its partials
        (nothing will resume them; `keep_partials`: the folder is reopened, and resumes them),
        close its manifest."""
        await self._end_session(folder.mapping_id)
        if not keep_partials:
            await anyio.to_thread.run_sync(folder.drop_partials_under, "")
        await anyio.to_thread.run_sync(folder.manifest.close)

    async def _receive(
        self,
        framed: FramedStream,
        folder: TargetFolder,
        journal_id: str,
        sender_capabilities: Sequence[str] = (),
    ) -> None:
        session = await anyio.to_thread.run_sync(
            partial(session_for, folder, journal_id, self.reporter(folder, journal_id))
        )
        session.sender_resends_renames = CAP_RENAME_RESEND in sender_capabilities
        feed = self.relays(folder.mapping_id)
        session.keeps_applied_before_refusal = feed is None
        try:
            # A relay resumes too: its links send children the part below the resume offset from
            # its own copy (transfer/relay_resume.py).
            partials = await anyio.to_thread.run_sync(folder.list_partials)
            if feed is not None:
                # It tells the source's unreadable paths first thing if we both take them.
                await feed.parent_opens(
                    CAP_UNREADABLE in set(sender_capabilities) & set(self.capabilities)
                )
                await anyio.to_thread.run_sync(feed.spool.begin, journal_id, session.watermark)
                feed.committed = session.watermark
            await framed.send(
                MappingState(
                    mapping_id=folder.mapping_id,
                    watermark=session.watermark,
                    root_hash=b"",
                    partials=partials,
                )
            )
            batches = ReadAhead(
                framed, self._read_batch, RELAY_BATCH_BYTES if feed else APPLY_BATCH_BYTES
            )
            async with anyio.create_task_group() as tg:
                if feed is not None:
                    tg.start_soon(self._send_subtree_acks, framed, feed)
                tg.start_soon(keep_sender_waiting, framed)
                tg.start_soon(batches.run)
                async for batch in batches:
                    if not await self._take_batch(framed, session, feed, batch):
                        tg.cancel_scope.cancel()
                        return
                batches.raise_error()
                tg.cancel_scope.cancel()  # unreachable in practice: a stream ends with an error
        finally:
            # Shielded: a session ended by a newer one (or a restart) is cancelled, and an
            # unshielded await here raised at once: its half-received and staged files stayed
            # open for the life of the process.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close)
                if feed is not None:
                    feed.expect_unreadable(False)  # what we kept stays in force
                    await anyio.to_thread.run_sync(feed.spool.cut_unfinished)

    async def _take_batch(
        self,
        framed: FramedStream,
        session: ReceiverSession,
        feed: RelayFeed | None,
        batch: list[AnyMessage],
    ) -> bool:
        """Spool (as a relay) and apply a batch, and answer it; False if it was refused."""
        # A SourceUnreadable ends its batch: what came before it is spooled (and applied) first.
        told = batch[-1] if isinstance(batch[-1], SourceUnreadable) else None
        if told is not None:
            batch.pop()
        if feed is not None:
            refused = await anyio.to_thread.run_sync(feed.spool_batch, batch)
            if refused is not None:  # the spool's disk full, say: not applied, the parent retries
                await framed.send(refused)
                return False
            feed.appended()
        replies = await anyio.to_thread.run_sync(session.apply_batch, batch)
        if feed is not None:
            replies = [self._relay_ack(feed, r) for r in replies]
        if replies:
            await framed.send_many(replies)
        if any(isinstance(r, Error) for r in replies):
            return False
        if told is not None and feed is not None:  # a relay keeps it; other targets need not
            await feed.learn_unreadable(told)
        return True

    @staticmethod
    def _relay_ack(feed: RelayFeed, reply: AnyMessage) -> AnyMessage:
        if not isinstance(reply, Ack):
            return reply
        feed.set_committed(reply.watermark)
        return Ack(mapping_id=reply.mapping_id, watermark=reply.watermark, subtree=feed.subtree())

    @staticmethod
    async def _send_subtree_acks(framed: FramedStream, feed: RelayFeed) -> None:
        """Tell the parent as soon as a target below us commits more (the source releases on it)."""
        while True:
            await feed.marks_changed.wait()
            await anyio.sleep(ACK_FOLD_S)
            await framed.send(
                Ack(mapping_id=feed.mapping_id, watermark=feed.committed, subtree=feed.subtree())
            )

    async def _read_batch(
        self, framed: FramedStream, max_bytes: int = APPLY_BATCH_BYTES
    ) -> list[AnyMessage]:
        """Read messages up to a Checkpoint, a digest request, a size bound, or a pause in the
        stream (nothing more has arrived yet: a delta still being computed is applied as it comes)."""
        batch: list[AnyMessage] = []
        size = 0
        while True:
            if framed.pending():  # already decoded: no wait, so no timeout to arm
                message = await framed.receive()
            else:
                with anyio.fail_after(RECEIVE_TIMEOUT_S):
                    message = await framed.receive()
            if isinstance(message, Ping):
                await framed.send(Pong(nonce=message.nonce))
                continue
            if isinstance(message, Pong):  # the sender answering keep_sender_waiting
                continue
            if isinstance(message, SmallFile) and CAP_SMALL_FILE not in self.capabilities:
                raise ProtocolError(
                    f"SmallFile from a peer that was not told this agent takes it "
                    f"(announced: {', '.join(self.capabilities) or 'nothing'})"
                )
            if isinstance(message, SourceUnreadable) and CAP_UNREADABLE not in self.capabilities:
                raise ProtocolError(
                    "SourceUnreadable from a peer that was not told this agent takes it"
                )
            batch.append(message)
            size += framed.last_frame_bytes  # every frame counts: a batch's memory stays bounded
            if (
                isinstance(message, Checkpoint | DigestRequest | SourceUnreadable)
                or size >= max_bytes
                or len(batch) >= APPLY_BATCH_MESSAGES
                or not framed.pending()
            ):
                return batch
