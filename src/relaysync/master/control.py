"""The master's control server: agents' links over mutual TLS; assignments out, reports in.

Error handling: a link that fails its handshake or sends a bad frame is closed; the agent
reconnects. A server whose link drops is marked down at once, and up again on reconnect; the
router (master/router.py) re-plans around it, and around the hops agents report failed.
Resource handling: one task per agent link; pushes to an agent go through its own lock.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import anyio
from anyio.abc import TaskStatus

from relaysync._util.aio import is_link_error, leaf_error
from relaysync.constants import (
    CLOSE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MASTER_UNAUTHENTICATED_PER_ADDRESS,
    RECEIVE_TIMEOUT_S,
)
from relaysync.errors import ProtocolError, RelaySyncError
from relaysync.master.events import EventBus, EventType
from relaysync.master.joblog import JobLogWriter
from relaysync.master.router import Router
from relaysync.master.store.store import Store
from relaysync.protocol.connection import ACCEPT_BACKLOG
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import server_hello
from relaysync.protocol.messages import (
    Assignment,
    AssignmentAck,
    CommitReport,
    HopFailed,
    MassDeleteHeld,
    MetricsReport,
    Ping,
    Pong,
    Register,
    ReleaseReport,
)
from relaysync.transfer import tls

logger = logging.getLogger(__name__)


@dataclass
class _AgentLink:
    node_id: str
    name: str
    framed: FramedStream
    epoch_sent: int = -1
    epoch_acked: int = -1
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class ControlServer:
    """Accepts agents' control links and keeps their assignments current."""

    def __init__(self, *, host: str, port: int, ctx: ssl.SSLContext, store: Store, events: EventBus,
                 joblog: JobLogWriter,
                 on_metrics: Callable[[str, str, MetricsReport], None] | None = None,
                 router: Router | None = None) -> None:
        self.host, self.port = host, port
        self.ctx = ctx
        self.store = store
        self.events = events
        self.joblog = joblog
        self.on_metrics = on_metrics  # (node_id, name, report), on the event loop's thread
        self.router = router  # fills in routes, drops failed targets; None: stars from the source
        self.links: dict[str, _AgentLink] = {}
        self._changed = anyio.Event()

    def notify_change(self) -> None:
        """Mappings or servers changed: push fresh assignments (callable from any thread)."""
        try:
            anyio.from_thread.run_sync(self._changed.set)
        except RuntimeError:
            self._changed.set()

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._push_loop)
            port = await tg.start(partial(tls.serve_tls, self.host, self.port, self.ctx, self._handle,
                                          max_unauthenticated=ACCEPT_BACKLOG,  # a whole fleet reconnecting
                                          # agents behind one NAT address reconnect at once too
                                          max_unauthenticated_per_address=MASTER_UNAUTHENTICATED_PER_ADDRESS))
            logger.info("control server listening on %s:%s", self.host, port)
            task_status.started(port)

    async def _push_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            for link in list(self.links.values()):
                try:
                    await self._push(link)
                except (RelaySyncError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError,
                        anyio.EndOfStream) as exc:  # the agent went away mid-push: it gets a fresh one on reconnect
                    logger.warning("push to %s failed: %s", link.name, exc)
                except Exception:  # a bug must cost one push, not the master and every agent's link
                    logger.exception("push to %s failed unexpectedly", link.name)

    def _assignment(self, node_id: str) -> Assignment:
        if self.router is None:
            return self.store.assignment_for(node_id)
        # A re-plan bumps the config epoch, so the epoch check below still sees new routes.
        assignment = self.store.assignment_for(node_id, self.router.relay_mappings(node_id),
                                               route=self.router.routes_for)
        return self.router.apply(assignment, node_id)

    async def _router_call(self, method: Callable[..., None], *args: object) -> None:
        """Tell the router (in a worker thread: it reads the store); its failure never ends a link."""
        try:
            await anyio.to_thread.run_sync(method, *args)
        except RelaySyncError as exc:
            logger.warning("router update failed, the next tick retries: %s", exc)

    async def _push(self, link: _AgentLink) -> None:
        assignment = await anyio.to_thread.run_sync(self._assignment, link.node_id)
        if assignment.epoch == link.epoch_sent:
            return
        async with link.lock:
            await link.framed.send(assignment)
        link.epoch_sent = assignment.epoch

    async def _handle(self, framed: FramedStream) -> None:
        node_id = tls.peer_node_id(framed)
        link: _AgentLink | None = None
        try:
            register = await self._handshake(framed, node_id)
            link = _AgentLink(node_id=node_id, name=register.name, framed=framed)
            await self._register(link, register)
            await self._read_loop(link)
        except Exception as group:
            if not is_link_error(group):
                logger.exception("control link of %s failed unexpectedly; closing it",
                                 link.name if link else node_id[:16])
                return
            exc = leaf_error(group)
            logger.warning("control link of %s ended: %s", link.name if link else node_id[:16],
                           exc or type(exc).__name__)
        finally:
            if link is not None and self.links.get(node_id) is link:
                del self.links[node_id]
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.store.set_server_state, node_id, "down", time.time())
                    if self.router is not None:
                        await self._router_call(self.router.node_down, node_id)
                self.events.publish(EventType.SERVER_DOWN, node_id=node_id, name=link.name)
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await framed.aclose()

    async def _handshake(self, framed: FramedStream, node_id: str) -> Register:
        with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
            await server_hello(framed, node_id="", name="master", role="master")
            register = await framed.receive()
        if not isinstance(register, Register):
            raise ProtocolError("expected Register")
        return register

    async def _register(self, link: _AgentLink, register: Register) -> None:
        def upsert() -> None:
            self.store.upsert_server(node_id=link.node_id, name=register.name, region=register.region,
                                     group=register.group, address=register.peer_address)
            self.store.set_server_state(link.node_id, "up", time.time())

        await anyio.to_thread.run_sync(upsert)
        old = self.links.get(link.node_id)
        self.links[link.node_id] = link
        if old is not None:
            old.framed.abort()
        self.events.publish(EventType.SERVER_UP, node_id=link.node_id, name=register.name,
                            address=register.peer_address)
        if self.router is not None:
            await self._router_call(self.router.node_up, link.node_id)
        await self._push(link)
        self._changed.set()  # its address may have changed: others get fresh peers

    async def _read_loop(self, link: _AgentLink) -> None:
        last_seen = time.time()
        while True:
            with anyio.fail_after(RECEIVE_TIMEOUT_S):
                message = await link.framed.receive()
            now = time.time()
            match message:
                case CommitReport():
                    self.joblog.add(message)
                case MetricsReport():
                    if self.on_metrics is not None:
                        self.on_metrics(link.node_id, link.name, message)
                case AssignmentAck():
                    link.epoch_acked = message.epoch
                case MassDeleteHeld():
                    logger.error("mapping %s: source %s held back %s deletes of %s entries%s; "
                                 "POST /api/mappings/%s/confirm-deletes to let them go",
                                 message.mapping_id, link.name, message.deletes, message.entries,
                                 " (its folder is missing)" if message.root_missing else "",
                                 message.mapping_id)
                    data = {"mapping_id": message.mapping_id, "server": link.name, "deletes": message.deletes,
                            "entries": message.entries, "root_missing": message.root_missing}
                    self.events.publish(EventType.MASS_DELETE_HELD, **data)
                    self.events.publish(EventType.ALARM, reason="mass delete held", **data)
                case ReleaseReport():
                    await anyio.to_thread.run_sync(self.store.modes.record_release, message.mapping_id,
                                                   message.release, message.upto_seq)
                case HopFailed():
                    if self.router is not None:
                        await self._router_call(partial(self.router.hop_failed, message.mapping_id, link.node_id,
                                                        message.child, attempts=message.attempts,
                                                        error=message.error))
                case Ping():
                    async with link.lock:
                        await link.framed.send(Pong(nonce=message.nonce))
                case Pong():
                    pass
                case _:
                    raise ProtocolError(f"unexpected {type(message).__name__} on the control link")
            if now - last_seen > 5.0:
                last_seen = now
                await anyio.to_thread.run_sync(self.store.set_server_state, link.node_id, "up", now)
