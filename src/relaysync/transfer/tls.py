"""TLS 1.3 with mutual authentication between nodes; a node is its certificate's fingerprint.

Certificates come from the master's CA. Peers are pinned by fingerprint (the node id), so
host names are not checked. ssl errors are translated here, and only here.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from relaysync.constants import (
    MAX_MESSAGE_BYTES,
    MAX_UNAUTHENTICATED,
    MAX_UNAUTHENTICATED_PER_ADDRESS,
    PREAUTH_MAX_MESSAGE_BYTES,
)
from relaysync.errors import LinkDown, RelaySyncError, TLSHandshakeFailed, UnknownPeer
from relaysync.protocol.connection import first_byte, open_framed, serve_framed, wrap_accepted
from relaysync.protocol.framing import FramedStream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """A node's key, certificate and the CA that signed the fleet."""

    key_path: Path
    cert_path: Path
    ca_path: Path

    @property
    def node_id(self) -> str:
        return fingerprint_pem(self.cert_path.read_bytes())

    @classmethod
    def in_directory(cls, directory: Path) -> Identity:
        return cls(directory / "node.key", directory / "node.pem", directory / "ca.pem")

    def exists(self) -> bool:
        return self.key_path.exists() and self.cert_path.exists() and self.ca_path.exists()


def fingerprint_der(der: bytes) -> str:
    """Return the node id for a DER certificate: SHA-256, hex."""
    return hashlib.sha256(der).hexdigest()


def fingerprint_pem(pem: bytes) -> str:
    return fingerprint_der(ssl.PEM_cert_to_DER_cert(pem.decode("ascii")))


def _context(purpose: ssl.Purpose, identity: Identity) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=str(identity.ca_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # peers are pinned by certificate fingerprint instead
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    return ctx


def server_context(identity: Identity) -> ssl.SSLContext:
    """Context for a listener that requires a client certificate from the fleet's CA."""
    return _context(ssl.Purpose.CLIENT_AUTH, identity)


def client_context(identity: Identity) -> ssl.SSLContext:
    return _context(ssl.Purpose.SERVER_AUTH, identity)


@contextmanager
def map_tls_errors(where: str) -> Iterator[None]:
    """Translate ssl and socket errors of a handshake into relaysync errors."""
    try:
        yield
    except ssl.SSLError as exc:
        raise TLSHandshakeFailed(f"{where}: {exc.reason or exc}") from exc
    except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        raise LinkDown(where, exc or type(exc).__name__) from exc


def peer_node_id(framed: FramedStream) -> str:
    """Return the fingerprint of the peer's certificate on an established TLS connection."""
    ssl_object = framed.extra("ssl_object")
    der = (
        ssl_object.getpeercert(binary_form=True)
        if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket)
        else None
    )
    if not der:
        raise TLSHandshakeFailed("peer sent no certificate")
    return fingerprint_der(der)


def peer_common_name(framed: FramedStream) -> str:
    """Return the subject common name of the peer's certificate ("" if it has none).

    Only meaningful for a certificate the context verified against the fleet's CA.
    """
    ssl_object = framed.extra("ssl_object")
    cert = (
        ssl_object.getpeercert() if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket) else None
    )
    subject = cert.get("subject") if cert else None
    if isinstance(subject, tuple):
        for rdn in subject:
            for attribute in rdn:
                if isinstance(attribute, tuple) and attribute[0] == "commonName":
                    return str(attribute[1])
    return ""


def peer_address(framed: FramedStream) -> str:
    remote = framed.extra("peername")
    return f"{remote[0]}:{remote[1]}" if isinstance(remote, tuple) else str(remote)


def _split(address: str) -> tuple[str, int]:
    """host:port of a peer (as the master passed on what the peer registered).

    Raises:
        LinkDown: not host:port with a port in 1-65535 (a link failure like any other: the
            link retries and the master hears of the failed hop, instead of a ValueError).
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise LinkDown(address, "not a host:port this agent can connect to")
    return host.removeprefix("[").removesuffix("]"), int(port)  # [IPv6]:port


async def connect(
    address: str,
    ctx: ssl.SSLContext,
    *,
    expected_node_id: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> FramedStream:
    """Open a TLS connection to host:port and check the peer is who we expect.

    Raises:
        LinkDown: cannot connect in CONNECT_TIMEOUT_S.
        TLSHandshakeFailed: the handshake failed (wrong CA, expired certificate, ...).
        UnknownPeer: the peer's fingerprint is not `expected_node_id`.
    """
    host, port = _split(address)
    with map_tls_errors(f"connect {address}"):
        framed = await open_framed(host, port, ssl_ctx=ctx, max_message_bytes=max_message_bytes)
    try:
        node = peer_node_id(framed)
        if expected_node_id is not None and node != expected_node_id:
            raise UnknownPeer(node[:16])
    except BaseException:
        framed.abort()
        raise
    return framed


async def connect_plain(
    address: str, *, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> FramedStream:
    """Open a plain TCP connection (a TLS-off link); the caller authenticates with `link_mac`."""
    host, port = _split(address)
    with map_tls_errors(f"connect {address}"):
        return await open_framed(host, port, max_message_bytes=max_message_bytes)


TLS_HANDSHAKE_BYTE = 0x16  # a TLS record of type handshake; our plain frames start with 0x00


async def serve_tls(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    handler: Callable[[FramedStream], Awaitable[None]],
    *,
    plain_handler: Callable[[FramedStream], Awaitable[None]] | None = None,
    max_unauthenticated: int = MAX_UNAUTHENTICATED,
    max_unauthenticated_per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port; run `handler` for each client that completes a mutual TLS handshake.

    With `plain_handler`, a client whose first byte is not a TLS handshake is handed to it
    instead (links an operator marked trusted; the handler must authenticate them itself).
    A failed handshake (no certificate, one from another CA, an expired one, garbage) is
    logged in one line and the connection closed; the server goes on. At most
    `max_unauthenticated` connections may be on their way to authenticating at once (so that
    connections that never do cannot take every file descriptor), and at most
    `max_unauthenticated_per_address` of them from one source address (so that one host cannot
    take them all and lock the other peers out): more are closed at accept. Each one's wait is
    bounded: CONNECT_TIMEOUT_S for its first byte and for the TLS handshake, and a plain link's
    handler authenticates it under its own timeouts.
    """

    gate = _Gate(max_unauthenticated, max_unauthenticated_per_address)

    async def accept(sock: socket.socket, remote: str) -> None:
        address = remote.rpartition(":")[0]
        leave = gate.enter(address)
        if leave is None:
            sock.close()
            if gate.refused % 100 == 1:
                logger.warning(
                    "refused a connection from %s: %s connections at once (%s from one "
                    "address) have not authenticated yet (%s refused so far)",
                    remote,
                    gate.limit,
                    gate.per_address,
                    gate.refused,
                )
            return
        try:
            await _accepted(sock, remote, leave)
        finally:
            leave()

    async def _accepted(
        sock: socket.socket, remote: str, authenticated: Callable[[], None]
    ) -> None:
        use_tls = True
        if plain_handler is not None:
            first = await first_byte(sock)
            if first is None:
                sock.close()
                return
            use_tls = first == TLS_HANDSHAKE_BYTE
        try:
            with map_tls_errors(f"accept from {remote}"):
                # A plain client has proven nothing yet: small frames only until its handler
                # authenticates it (a 5-byte header must not make us hold 4 MiB for it).
                framed = await wrap_accepted(
                    sock,
                    ssl_ctx=ctx if use_tls else None,
                    max_message_bytes=MAX_MESSAGE_BYTES if use_tls else PREAUTH_MAX_MESSAGE_BYTES,
                )
        except RelaySyncError as exc:  # the loop owns the socket now: it closes it, never us
            logger.warning("refused connection: %s", exc)
            return
        if use_tls:
            authenticated()  # mutual TLS: the peer holds a certificate of the fleet
        else:
            framed.on_authenticated = (
                authenticated  # its handler says so (FramedStream.allow_messages)
            )
        try:
            await (handler if use_tls else plain_handler)(framed)  # type: ignore[misc]
        finally:
            framed.abort()  # the handler closed it gracefully already, or failed

    await serve_framed(host, port, accept, task_status=task_status)


class _Gate:
    """Counts the connections of a listener that have not authenticated yet, in all and per
    source address."""

    def __init__(self, limit: int, per_address: int) -> None:
        self.limit = limit
        self.per_address = per_address
        self.waiting = 0
        self.by_address: dict[str, int] = {}  # only addresses with a connection waiting
        self.refused = 0

    def enter(self, address: str) -> Callable[[], None] | None:
        """A slot for one more connection from `address`, as the function that gives it back
        (once), or None."""
        held = self.by_address.get(address, 0)
        if self.waiting >= self.limit or held >= self.per_address:
            self.refused += 1
            return None
        self.waiting += 1
        self.by_address[address] = held + 1
        given_back = False

        def leave() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self.waiting -= 1
                left = self.by_address[address] - 1
                if left:
                    self.by_address[address] = left
                else:
                    del self.by_address[address]

        return leave


def link_mac(secret: bytes, nonce: bytes, mapping_id: int, source: str, target: str) -> bytes:
    """The proof a plain link's source gives: HMAC-SHA256 over the challenge and who talks to whom."""
    message = nonce + f"|{mapping_id}|{source}|{target}".encode()
    return hmac.new(secret, message, hashlib.sha256).digest()
