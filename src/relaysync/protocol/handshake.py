"""The Hello exchange that opens every connection, on both sides, with the version check."""

from __future__ import annotations

from typing import Literal

import anyio

from relaysync.constants import CAPABILITIES, PROTOCOL_VERSION
from relaysync.errors import (
    CertificateRefused,
    ConfigError,
    IncompatibleVersion,
    LinkDown,
    PeerRefused,
    ProtocolError,
)
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import AnyMessage, Error, ErrorCode, Hello


def announced_capabilities(setting: str) -> tuple[str, ...]:
    """The capabilities a node announces for its configuration ("*" = all of this release).

    Raises:
        ConfigError: a capability this release does not have.
    """
    if setting.strip() == "*":
        return CAPABILITIES
    named = tuple(c.strip() for c in setting.split(",") if c.strip())
    unknown = [c for c in named if c not in CAPABILITIES]
    if unknown:
        raise ConfigError(
            f"capabilities: {', '.join(unknown)} unknown; this release has "
            f"{', '.join(CAPABILITIES)} (or '*' for all)"
        )
    return named


async def client_hello(
    framed: FramedStream,
    *,
    node_id: str,
    name: str,
    capabilities: tuple[str, ...] = CAPABILITIES,
) -> Hello:
    """Send our Hello (announcing `capabilities`) and return the peer's (the caller bounds it
    with a timeout).

    Raises:
        CertificateRefused: the peer refused our certificate (expired), and said why.
        PeerRefused: the peer answered with another Error.
        LinkDown: the peer closed a TLS connection before its Hello (it may refuse our
            certificate: from another fleet's CA; TLS 1.3 gives us no alert then).
        IncompatibleVersion: the peer speaks another protocol version.
        ProtocolError: anything but a Hello came back.
    """
    await framed.send(
        Hello(
            protocol_version=PROTOCOL_VERSION,
            node_id=node_id,
            name=name,
            role="agent",
            capabilities=capabilities,
        )
    )
    address = _address(framed)  # now: a closed transport no longer knows it
    hello = await _first_answer(framed, address)
    if isinstance(hello, Error) and hello.code == ErrorCode.CERT_REFUSED:
        raise CertificateRefused(f"the node at {address}", hello.detail)
    if isinstance(hello, Error):
        raise PeerRefused(hello.detail, hello.code.name)
    if not isinstance(hello, Hello):
        raise ProtocolError(f"expected Hello, got {type(hello).__name__}")
    if hello.protocol_version != PROTOCOL_VERSION:
        raise IncompatibleVersion(hello.protocol_version, PROTOCOL_VERSION)
    return hello


def _address(framed: FramedStream) -> str:
    remote = framed.extra("peername")
    return f"{remote[0]}:{remote[1]}" if isinstance(remote, tuple) else str(remote)


async def _first_answer(framed: FramedStream, address: str) -> AnyMessage:
    try:
        return await framed.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        if framed.extra("ssl_object") is None:
            raise
        raise LinkDown(
            address,
            "it closed the connection after the TLS handshake, before its Hello: it may not "
            "accept this node's certificate (one from another fleet's CA); its log says why",
        ) from exc


async def server_hello(
    framed: FramedStream,
    *,
    node_id: str,
    name: str,
    role: Literal["agent", "master"],
    capabilities: tuple[str, ...] = CAPABILITIES,
) -> Hello:
    """Read the client's Hello, refuse another protocol version clearly, answer with ours.

    Raises:
        ProtocolError: the first frame is not a Hello.
        IncompatibleVersion: the client speaks another version (it was told so first).
    """
    hello = await framed.receive()
    if not isinstance(hello, Hello):
        raise ProtocolError("first frame must be Hello")
    if hello.protocol_version != PROTOCOL_VERSION:
        await framed.send(
            Error(
                code=ErrorCode.VERSION,
                detail=(
                    f"this {role} speaks protocol {PROTOCOL_VERSION}, you speak {hello.protocol_version}: "
                    "upgrade the older side (the master and every agent must run the same protocol version)"
                ),
            )
        )
        raise IncompatibleVersion(hello.protocol_version, PROTOCOL_VERSION)
    await framed.send(
        Hello(
            protocol_version=PROTOCOL_VERSION,
            node_id=node_id,
            name=name,
            role=role,
            capabilities=capabilities,
        )
    )
    return hello
