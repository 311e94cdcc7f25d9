"""The Hello exchange that opens every connection, on both sides, with the version check."""

from __future__ import annotations

from typing import Literal

from relaysync.constants import CAPABILITIES, PROTOCOL_VERSION
from relaysync.errors import ConfigError, IncompatibleVersion, PeerRefused, ProtocolError
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import Error, ErrorCode, Hello


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
        PeerRefused: the peer answered with an Error.
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
    hello = await framed.receive()
    if isinstance(hello, Error):
        raise PeerRefused(hello.detail, hello.code.name)
    if not isinstance(hello, Hello):
        raise ProtocolError(f"expected Hello, got {type(hello).__name__}")
    if hello.protocol_version != PROTOCOL_VERSION:
        raise IncompatibleVersion(hello.protocol_version, PROTOCOL_VERSION)
    return hello


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
