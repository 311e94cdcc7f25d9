"""Opening and accepting framed connections on the running asyncio loop (uvloop in services).

`open_framed` dials host:port (optionally TLS); `serve_framed` listens and hands each accepted
socket to a callback that decides how to wrap it (`wrap_accepted`), so one port can take TLS and
plain clients: the first byte tells them apart without being consumed (MSG_PEEK).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

import anyio
from anyio.abc import TaskStatus

from relaysync._util.addresses import join_address
from relaysync.constants import CONNECT_TIMEOUT_S, MAX_MESSAGE_BYTES
from relaysync.errors import CannotListen
from relaysync.protocol.framing import FramedStream, FrameProtocol

logger = logging.getLogger(__name__)

ACCEPT_BACKLOG = 4096  # a whole fleet reconnecting at once to the master


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def open_framed(
    host: str,
    port: int,
    *,
    ssl_ctx: ssl.SSLContext | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> FramedStream:
    """Connect (and with `ssl_ctx`, complete the TLS handshake) within CONNECT_TIMEOUT_S.

    Raises:
        OSError, TimeoutError: cannot connect; ssl.SSLError: the handshake failed.
    """
    loop = asyncio.get_running_loop()
    protocol = FrameProtocol(max_message_bytes)  # uvloop returns its SSL protocol, not ours
    with anyio.fail_after(CONNECT_TIMEOUT_S):
        transport, _ = await loop.create_connection(
            lambda: protocol,
            host,
            port,
            ssl=ssl_ctx,
            server_hostname="" if ssl_ctx is not None else None,  # peers are pinned by fingerprint
            ssl_handshake_timeout=CONNECT_TIMEOUT_S if ssl_ctx is not None else None,
        )
    raw = transport.get_extra_info("socket")
    if raw is not None:
        _tune(raw)
    return FramedStream(cast(asyncio.Transport, transport), protocol)


async def wrap_accepted(
    sock: socket.socket,
    *,
    ssl_ctx: ssl.SSLContext | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> FramedStream:
    """Take over an accepted socket (TLS server side when `ssl_ctx` is given)."""
    loop = asyncio.get_running_loop()
    protocol = FrameProtocol(max_message_bytes)  # uvloop returns its SSL protocol, not ours
    with anyio.fail_after(CONNECT_TIMEOUT_S):
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol,
            sock,
            ssl=ssl_ctx,
            ssl_handshake_timeout=CONNECT_TIMEOUT_S if ssl_ctx is not None else None,
        )
    return FramedStream(cast(asyncio.Transport, transport), protocol)


async def first_byte(sock: socket.socket) -> int | None:
    """The first byte the client sent, left unread; None if it sent nothing in time or closed."""
    with anyio.move_on_after(CONNECT_TIMEOUT_S):
        try:
            await anyio.wait_readable(sock)
            peeked = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return None
        return peeked[0] if peeked else None
    return None


async def serve_framed(
    host: str,
    port: int,
    on_socket: Callable[[socket.socket, str], Awaitable[None]],
    *,
    option: str = "--listen",
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port; run `on_socket(sock, "ip:port")` in its own task for each client.

    The callback owns the socket until it hands it to the loop (`wrap_accepted`); after that
    only the transport closes it (uvloop closes the fd itself a moment later: closing the socket
    too would close whatever reused that fd number). An exception it raises is logged and costs
    only that connection; the listener goes on.

    Raises:
        CannotListen: host:port cannot be bound (in use...); it names `option`, which sets it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # "::" is every interface, IPv4 too: an agent there advertises its IPv4 route to the master
    # as readily as an IPv6 one (create_server makes an IPv6 socket IPv6-only otherwise).
    dualstack = host == "::" and socket.has_dualstack_ipv6()
    try:
        listener = socket.create_server(
            (host, port), family=family, backlog=ACCEPT_BACKLOG, dualstack_ipv6=dualstack
        )
    except OSError as exc:
        raise CannotListen.of(join_address(host, port), exc, option) from exc
    listener.setblocking(False)
    loop = asyncio.get_running_loop()

    async def guarded(sock: socket.socket, remote: str) -> None:
        try:
            await on_socket(sock, remote)
        except Exception:  # one connection's bug must not stop the listener
            logger.exception("connection handler failed; closing the connection from %s", remote)

    try:
        async with anyio.create_task_group() as tg:
            task_status.started(listener.getsockname()[1])
            while True:
                try:
                    sock, addr = await loop.sock_accept(listener)
                except OSError as exc:  # EMFILE, ECONNABORTED...: keep listening
                    logger.warning("accept failed: %s", exc)
                    await anyio.sleep(0.05)
                    continue
                sock.setblocking(False)
                _tune(sock)
                tg.start_soon(guarded, sock, f"{addr[0]}:{addr[1]}")
    finally:
        listener.close()
