"""TLS 1.3 with mutual authentication between nodes; a node is its certificate's fingerprint.

Certificates come from the master's CA. Peers are pinned by fingerprint (the node id), so
host names are not checked. Certificate dates are checked after the handshake (`check_dates`), so
that a refusal names the date and reaches the client. ssl errors are translated here, and only here.
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

from relaysync.auth.validity import PEER_REMEDY, REJOIN_AGENT, check_current, validity
from relaysync.constants import (
    CLOSE_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    MAX_UNAUTHENTICATED,
    MAX_UNAUTHENTICATED_PER_ADDRESS,
    PREAUTH_MAX_MESSAGE_BYTES,
)
from relaysync.errors import (
    AuthError,
    CertificateExpired,
    CertificateNotYetValid,
    ForeignCertificate,
    LinkDown,
    RelaySyncError,
    TLSHandshakeFailed,
    UnknownPeer,
    error_text,
)
from relaysync.protocol.connection import first_byte, open_framed, serve_framed, wrap_accepted
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import Error, ErrorCode

logger = logging.getLogger(__name__)

NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME: dates are checked by check_dates instead
# X509_V_ERR_* meaning the chain does not lead to our CA: no issuer certificate here (2, 20),
# a bad signature (7: another fleet's CA has the same name as ours), self-signed (18, 19, 21)
FOREIGN_CA_CODES = frozenset({2, 7, 18, 19, 20, 21})


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
    # OpenSSL's own date check refuses an expired certificate with an alert that names no date
    # and, in TLS 1.3, reaches a client only as a closed connection. The dates are checked right
    # after the handshake instead (check_dates), before a frame is read, and the refusal says
    # whose certificate, until when, and what to do.
    ctx.verify_flags |= NO_CHECK_TIME
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    return ctx


def server_context(identity: Identity) -> ssl.SSLContext:
    """Context for a listener that requires a client certificate from the fleet's CA."""
    return _context(ssl.Purpose.CLIENT_AUTH, identity)


def client_context(identity: Identity) -> ssl.SSLContext:
    return _context(ssl.Purpose.SERVER_AUTH, identity)


@contextmanager
def map_tls_errors(where: str, peer: str = "", *, accepting: bool = False) -> Iterator[None]:
    """Translate ssl and socket errors of a handshake into relaysync errors.

    Args:
        peer: who the other end is, as ForeignCertificate names it ("the node at host:port").
        accepting: the server side, where a client that refuses our certificate only resets.
    """
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in FOREIGN_CA_CODES:
            raise ForeignCertificate(peer or where, exc.verify_message) from exc
        raise TLSHandshakeFailed(f"{where}: {exc.verify_message or exc.reason or exc}") from exc
    except ssl.SSLError as exc:
        raise TLSHandshakeFailed(f"{where}: {exc.reason or exc}") from exc
    except ConnectionResetError as exc:
        if not accepting:
            raise LinkDown(where, error_text(exc)) from exc
        raise LinkDown(
            where,
            "the client reset the connection during the TLS handshake: it may refuse this "
            "node's certificate (expired, or from another fleet's CA); its log says why",
        ) from exc
    except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
        raise LinkDown(where, error_text(exc)) from exc


def _peer_der(framed: FramedStream) -> bytes:
    ssl_object = framed.extra("ssl_object")
    der = (
        ssl_object.getpeercert(binary_form=True)
        if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket)
        else None
    )
    if not der:
        raise TLSHandshakeFailed("peer sent no certificate")
    return der


def peer_node_id(framed: FramedStream) -> str:
    """Return the fingerprint of the peer's certificate on an established TLS connection."""
    return fingerprint_der(_peer_der(framed))


def peer_not_after(framed: FramedStream) -> float:
    """When the peer's certificate expires (unix time), on an established TLS connection."""
    return validity(_peer_der(framed))[1].timestamp()


def check_dates(framed: FramedStream, whose: str, remedy: str) -> None:
    """Refuse a peer certificate, or a CA certificate of ours, outside its validity period.

    The contexts leave the dates to this check (NO_CHECK_TIME), so both ends of every TLS
    connection call it right after the handshake.

    Raises:
        CertificateExpired, CertificateNotYetValid: the peer's certificate or our CA's.
    """
    check_current(_peer_der(framed), whose, remedy)
    ssl_object = framed.extra("ssl_object")
    context = ssl_object.context if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket) else None
    for ca in context.get_ca_certs(binary_form=True) if context is not None else ():
        check_current(
            ca,
            "this fleet's CA (ca.pem)",
            "the fleet needs a new CA: move the master's ca/ directory away, restart it, and "
            "join every agent again",
        )


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
        ForeignCertificate: the peer's certificate is not from this fleet's CA.
        CertificateExpired, CertificateNotYetValid: the peer's certificate is out of date.
        TLSHandshakeFailed: the handshake failed otherwise.
        UnknownPeer: the peer's fingerprint is not `expected_node_id`.
    """
    host, port = _split(address)
    with map_tls_errors(f"connect {address}", peer=f"the node at {address}"):
        framed = await open_framed(host, port, ssl_ctx=ctx, max_message_bytes=max_message_bytes)
    try:
        node = peer_node_id(framed)
        who = f"node {peer_common_name(framed)!r} ({node[:16]}) at {address}"
        check_dates(framed, who, PEER_REMEDY)
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
    option: str = "--listen",
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port; run `handler` for each client that completes a mutual TLS handshake.

    With `plain_handler`, a client whose first byte is not a TLS handshake is handed to it
    instead (links an operator marked trusted; the handler must authenticate them itself).
    A failed handshake (no certificate, one from another CA, garbage) is logged in one line
    and the connection closed; the server goes on. A client certificate out of its dates is
    logged the same way and the client told why in an Error(CERT_REFUSED) before the close. At most
    `max_unauthenticated` connections may be on their way to authenticating at once (so that
    connections that never do cannot take every file descriptor), and at most
    `max_unauthenticated_per_address` of them from one source address (so that one host cannot
    take them all and lock the other peers out): more are closed at accept. Each one's wait is
    bounded: CONNECT_TIMEOUT_S for its first byte and for the TLS handshake, and a plain link's
    handler authenticates it under its own timeouts.

    Raises:
        CannotListen: host:port cannot be bound; the message names `option`, which sets it.
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
            with map_tls_errors(
                f"accept from {remote}", f"a client connecting from {remote}", accepting=True
            ):
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
            if not await _client_dates_current(framed, remote):
                return
            authenticated()  # mutual TLS: the peer holds a current certificate of the fleet
        else:
            framed.on_authenticated = (
                authenticated  # its handler says so (FramedStream.allow_messages)
            )
        try:
            await (handler if use_tls else plain_handler)(framed)  # type: ignore[misc]
        finally:
            framed.abort()  # the handler closed it gracefully already, or failed

    await serve_framed(host, port, accept, option=option, task_status=task_status)


async def _client_dates_current(framed: FramedStream, remote: str) -> bool:
    """Check an accepted client's certificate dates; refuse it (logged, told why) if out of them."""
    try:
        node = peer_node_id(framed)
        who = f"node {peer_common_name(framed)!r} ({node[:16]}) connecting from {remote}"
        check_dates(framed, who, REJOIN_AGENT)
    except (CertificateExpired, CertificateNotYetValid) as exc:
        logger.warning("refused connection: %s", exc)
        await _refuse_certificate(framed, str(exc))
        return False
    except AuthError as exc:  # a certificate OpenSSL took but cryptography cannot read
        logger.warning("refused connection from %s: unreadable certificate: %s", remote, exc)
        framed.abort()
        return False
    return True


async def _refuse_certificate(framed: FramedStream, detail: str) -> None:
    """Tell a client why its certificate is refused, then close.

    In TLS 1.3 a client's handshake ends before the server has checked its certificate, so a
    TLS alert would reach it only as a closed connection; an Error frame says why, and when.
    """
    with anyio.move_on_after(CLOSE_TIMEOUT_S):
        try:
            await framed.send(Error(code=ErrorCode.CERT_REFUSED, detail=detail))
            # its Hello: closing with it unread would reset the connection, and lose the Error
            await framed.receive()
            await framed.aclose()
        except (RelaySyncError, OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    framed.abort()


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
