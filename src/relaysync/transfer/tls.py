"""TLS 1.3 with mutual authentication between nodes; a node is its certificate's fingerprint.

Certificates come from the master's CA. Peers are pinned by fingerprint (the node id), so
host names are not checked. ssl errors are translated here, and only here.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from relaysync.constants import CONNECT_TIMEOUT_S
from relaysync.errors import LinkDown, RelaySyncError, TLSHandshakeFailed, UnknownPeer

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
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        raise LinkDown(where, exc or type(exc).__name__) from exc


def peer_node_id(stream: TLSStream) -> str:
    """Return the fingerprint of the peer's certificate on an established TLS stream."""
    der = stream.extra(TLSAttribute.peer_certificate_binary)
    if not der:
        raise TLSHandshakeFailed("peer sent no certificate")
    return fingerprint_der(der)


def peer_address(stream: TLSStream) -> str:
    remote = stream.extra(SocketAttribute.remote_address)
    return f"{remote[0]}:{remote[1]}"


async def connect(
    address: str, ctx: ssl.SSLContext, *, expected_node_id: str | None = None
) -> TLSStream:
    """Open a TLS connection to host:port and check the peer is who we expect.

    Raises:
        LinkDown: cannot connect in CONNECT_TIMEOUT_S.
        TLSHandshakeFailed: the handshake failed (wrong CA, expired certificate, ...).
        UnknownPeer: the peer's fingerprint is not `expected_node_id`.
    """
    host, _, port = address.rpartition(":")
    with map_tls_errors(f"connect {address}"):
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            tcp = await anyio.connect_tcp(host, int(port))
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                stream = await TLSStream.wrap(
                    tcp, server_side=False, ssl_context=ctx, hostname=None, standard_compatible=False
                )
        except BaseException:
            await anyio.aclose_forcefully(tcp)
            raise
    node = peer_node_id(stream)
    if expected_node_id is not None and node != expected_node_id:
        await anyio.aclose_forcefully(stream)
        raise UnknownPeer(node[:16])
    return stream


TLS_HANDSHAKE_BYTE = 0x16  # a TLS record of type handshake; our plain frames start with 0x00


async def serve_tls(host: str, port: int, ctx: ssl.SSLContext, handler: Callable[[TLSStream], Awaitable[None]],
                    *, plain_handler: Callable[[anyio.abc.ByteStream], Awaitable[None]] | None = None,
                    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port; run `handler` for each client that completes a mutual TLS handshake.

    With `plain_handler`, a client whose first byte is not a TLS handshake is handed to it
    instead (links an operator marked trusted; the handler must authenticate them itself).
    A failed handshake (no certificate, one from another CA, an expired one, garbage) is
    logged in one line and the connection closed; the server goes on.
    """
    tcp_listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = tcp_listener.extra(SocketAttribute.local_port)

    async def accept(tcp: anyio.abc.SocketStream) -> None:
        remote = tcp.extra(SocketAttribute.remote_address)
        stream: anyio.abc.ByteStream = tcp
        if plain_handler is not None:
            first = await _first_bytes(tcp)
            if not first:
                await anyio.aclose_forcefully(tcp)
                return
            stream = _Prefixed(tcp, first)
            if first[0] != TLS_HANDSHAKE_BYTE:
                await plain_handler(stream)
                return
        try:
            with map_tls_errors(f"accept from {remote[0]}:{remote[1]}"):
                with anyio.fail_after(CONNECT_TIMEOUT_S):
                    tls_stream = await TLSStream.wrap(stream, server_side=True, ssl_context=ctx,
                                                      standard_compatible=False)
        except RelaySyncError as exc:
            logger.warning("refused connection: %s", exc)
            await anyio.aclose_forcefully(tcp)
            return
        await handler(tls_stream)

    async def accept_guarded(tcp: anyio.abc.SocketStream) -> None:
        try:
            await accept(tcp)
        except Exception:  # one connection's bug must not stop the listener
            logger.exception("connection handler failed; closing the connection")
            await anyio.aclose_forcefully(tcp)

    task_status.started(bound)
    async with tcp_listener:
        await tcp_listener.serve(accept_guarded)


async def _first_bytes(tcp: anyio.abc.SocketStream) -> bytes:
    """What the client sent first (b"" if nothing in time, or it closed)."""
    with anyio.move_on_after(CONNECT_TIMEOUT_S):
        try:
            return await tcp.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return b""
    return b""


class _Prefixed(anyio.abc.ByteStream):
    """A byte stream that first gives back bytes already read from it (to tell TLS from plain)."""

    def __init__(self, stream: anyio.abc.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


async def connect_plain(address: str) -> anyio.abc.SocketStream:
    """Open a plain TCP connection (a TLS-off link); the caller authenticates with `link_mac`."""
    host, _, port = address.rpartition(":")
    with map_tls_errors(f"connect {address}"), anyio.fail_after(CONNECT_TIMEOUT_S):
        return await anyio.connect_tcp(host, int(port))


def link_mac(secret: bytes, nonce: bytes, mapping_id: int, source: str, target: str) -> bytes:
    """The proof a plain link's source gives: HMAC-SHA256 over the challenge and who talks to whom."""
    message = nonce + f"|{mapping_id}|{source}|{target}".encode()
    return hmac.new(secret, message, hashlib.sha256).digest()
