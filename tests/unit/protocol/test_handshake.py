"""The Hello exchange over a real loopback socket: another protocol version is refused with an
error that names both versions and what to do, on both sides."""

from __future__ import annotations

import socket

import anyio
import pytest

from relaysync.constants import CAP_SMALL_FILE, CAPABILITIES, PROTOCOL_VERSION
from relaysync.errors import ConfigError, IncompatibleVersion
from relaysync.protocol.connection import open_framed, serve_framed, wrap_accepted
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import announced_capabilities, client_hello, server_hello
from relaysync.protocol.messages import Error, ErrorCode, Hello

OLD = PROTOCOL_VERSION + 1  # another version (e.g. the interim protocol-2 builds of 2026-12-03)


async def _with_server(serve: object, client: object) -> list[BaseException | Hello]:
    """Run `serve(framed)` for one accepted connection and `client(framed)`; the server's outcome."""
    outcome: list[BaseException | Hello] = []

    async def on_socket(sock: socket.socket, remote: str) -> None:
        framed = await wrap_accepted(sock)
        try:
            outcome.append(await serve(framed))  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome.append(exc)
        finally:
            await framed.aclose()

    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_framed, "127.0.0.1", 0, on_socket)
        framed = await open_framed("127.0.0.1", port)
        try:
            with anyio.fail_after(10):
                await client(framed)  # type: ignore[operator]
                while not outcome:
                    await anyio.sleep(0.01)
        finally:
            await framed.aclose()
            tg.cancel_scope.cancel()
    return outcome


def test_a_client_of_another_version_is_told_both_versions_and_what_to_do() -> None:
    answers: list[object] = []

    async def old_client(framed: FramedStream) -> None:
        await framed.send(Hello(protocol_version=OLD, node_id="a" * 64, name="old", role="agent"))
        answers.append(await framed.receive())

    async def server(framed: FramedStream) -> Hello:
        return await server_hello(framed, node_id="b" * 64, name="t1", role="agent")

    outcome = anyio.run(_with_server, server, old_client)
    [answer] = answers
    assert isinstance(answer, Error) and answer.code == ErrorCode.VERSION
    assert f"speaks protocol {PROTOCOL_VERSION}, you speak {OLD}" in answer.detail
    assert "upgrade the older side" in answer.detail
    [error] = outcome
    assert isinstance(error, IncompatibleVersion) and "upgrade the older side" in str(error)


def test_a_peer_of_another_version_answering_raises_a_clear_error() -> None:
    async def old_server(framed: FramedStream) -> Hello:
        hello = await framed.receive()
        assert isinstance(hello, Hello) and hello.protocol_version == PROTOCOL_VERSION
        await framed.send(Hello(protocol_version=OLD, node_id="b" * 64, name="old", role="agent"))
        return hello

    errors: list[BaseException] = []

    async def client(framed: FramedStream) -> None:
        with pytest.raises(IncompatibleVersion) as caught:
            await client_hello(framed, node_id="a" * 64, name="new")
        errors.append(caught.value)

    anyio.run(_with_server, old_server, client)
    assert f"speaks protocol version {OLD}, this node speaks {PROTOCOL_VERSION}" in str(errors[0])


@pytest.mark.parametrize("announced", [CAPABILITIES, ()], ids=["this release", "an older release"])
def test_capabilities_are_exchanged_and_an_older_release_announcing_none_is_accepted(
    announced: tuple[str, ...],
) -> None:
    """An older release of the same protocol version sends a Hello without capabilities: it is
    accepted, and its peer learns it must not send it SmallFile."""
    seen_by_client: list[Hello] = []

    async def server(framed: FramedStream) -> Hello:
        return await server_hello(
            framed, node_id="b" * 64, name="t1", role="agent", capabilities=announced
        )

    async def client(framed: FramedStream) -> None:
        seen_by_client.append(await client_hello(framed, node_id="a" * 64, name="src"))

    [client_seen_by_server] = anyio.run(_with_server, server, client)
    assert (
        isinstance(client_seen_by_server, Hello)
        and client_seen_by_server.capabilities == CAPABILITIES
    )
    assert seen_by_client[0].capabilities == announced
    assert (CAP_SMALL_FILE in seen_by_client[0].capabilities) == bool(announced)


@pytest.mark.parametrize(
    ("setting", "announced"),
    [
        ("*", CAPABILITIES),
        ("", ()),
        (" small_file ", (CAP_SMALL_FILE,)),
    ],
)
def test_announced_capabilities_from_the_configuration(
    setting: str, announced: tuple[str, ...]
) -> None:
    assert announced_capabilities(setting) == announced


def test_an_unknown_capability_in_the_configuration_is_refused_with_what_exists() -> None:
    with pytest.raises(ConfigError, match="bogus unknown; this release has small_file"):
        announced_capabilities("small_file,bogus")


def test_a_hello_with_too_many_or_too_long_capabilities_is_refused() -> None:
    from relaysync.constants import MAX_CAPABILITIES
    from relaysync.errors import ProtocolError

    for caps in (("x",) * (MAX_CAPABILITIES + 1), ("x" * 65,)):
        with pytest.raises(ProtocolError, match="capabilities"):
            Hello(
                protocol_version=PROTOCOL_VERSION,
                node_id="a" * 64,
                name="n",
                role="agent",
                capabilities=caps,
            ).validate()
    # a newer release's capability this one does not know is simply not used
    Hello(
        protocol_version=PROTOCOL_VERSION,
        node_id="a" * 64,
        name="n",
        role="agent",
        capabilities=(*CAPABILITIES, "some_future_kind"),
    ).validate()
