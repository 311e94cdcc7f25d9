"""The purge listener: authenticated notices refresh caches; hostile ones are refused, purge nothing."""

from __future__ import annotations

import struct
import time

import anyio
import msgspec
import pytest
from tests.component.purge.conftest import HOST, Harness

from relaysync.protocol.connection import open_framed
from relaysync.protocol.messages import Error, ErrorCode, PurgeAccepted
from relaysync.purge.listener import PurgeListener, make_notice, send_notice

pytestmark = pytest.mark.anyio


@pytest.fixture
async def listener(harness: Harness):  # type: ignore[no-untyped-def]
    lst = PurgeListener(
        host="127.0.0.1", port=0, purger=harness.purger, sites=harness.purger.site_by_name
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(lst.serve)
        yield lst, port
        tg.cancel_scope.cancel()


def _secret(harness: Harness) -> str:
    return harness.store.get_site(harness.site.id).secret


async def test_a_signed_url_notice_refreshes_the_caches(harness: Harness, listener) -> None:  # type: ignore[no-untyped-def]
    _, port = listener
    harness.write("n.txt", b"old")
    harness.warm("n.txt")
    harness.write("n.txt", b"new")
    url = f"http://{HOST}{harness.url_path('n.txt')}"
    answer = await send_notice(
        "127.0.0.1", port, make_notice(harness.site.name, _secret(harness), url)
    )
    assert isinstance(answer, PurgeAccepted) and answer.items == 2 * len(harness.farm.caches)
    await harness.until_served("n.txt", (200, b"new"))


async def test_a_signed_path_notice_refreshes_the_caches(harness: Harness, listener) -> None:  # type: ignore[no-untyped-def]
    _, port = listener
    harness.write("p.txt", b"old")
    harness.warm("p.txt")
    harness.write("p.txt", b"new")
    answer = await send_notice(
        "127.0.0.1", port, make_notice(harness.site.name, _secret(harness), "p.txt", "path")
    )
    assert isinstance(answer, PurgeAccepted)
    await harness.until_served("p.txt", (200, b"new"))


HOSTILE = [
    (
        "other-site URL",
        lambda h, s: make_notice(h.site.name, s, "http://evil.example.net/x.txt"),
        ErrorCode.FOREIGN_URL,
    ),
    (
        "outside the prefix",
        lambda h, s: make_notice(h.site.name, s, f"http://{HOST}/elsewhere/h.txt"),
        ErrorCode.FOREIGN_URL,
    ),
    (
        "traversal in a URL",
        lambda h, s: make_notice(
            h.site.name, s, f"http://{HOST}{h.url_path('')}%2e%2e/%2e%2e/etc/passwd"
        ),
        ErrorCode.UNSAFE_PATH,
    ),
    (
        "traversal in a path",
        lambda h, s: make_notice(h.site.name, s, "../../h.txt", "path"),
        ErrorCode.UNSAFE_PATH,
    ),
    (
        "bad HMAC",
        lambda h, s: make_notice(h.site.name, "x" * 32, f"http://{HOST}{h.url_path('h.txt')}"),
        ErrorCode.NOT_AUTHORIZED,
    ),
    (
        "unknown site",
        lambda h, s: make_notice("no-such-site", s, f"http://{HOST}{h.url_path('h.txt')}"),
        ErrorCode.NOT_AUTHORIZED,
    ),
    (
        "stale time",
        lambda h, s: make_notice(
            h.site.name, s, f"http://{HOST}{h.url_path('h.txt')}", at=time.time() - 3600
        ),
        ErrorCode.NOT_AUTHORIZED,
    ),
]


@pytest.mark.parametrize("name,build,code", HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_notices_are_refused_and_purge_nothing(
    harness: Harness, listener, name, build, code
) -> None:  # type: ignore[no-untyped-def]
    lst, port = listener
    harness.write("h.txt", b"old")
    harness.warm("h.txt")
    harness.write("h.txt", b"new")
    answer = await send_notice("127.0.0.1", port, build(harness, _secret(harness)))
    assert isinstance(answer, Error) and answer.code == code, answer
    # an accepted notice is queued before it is answered: nothing was
    assert harness.store.queued_purges() == 0 and not harness.results
    # negative check: nothing refreshes h.txt later either. A later change is worked on every
    # cache first; anything the notice had set going would have been too.
    await harness.later_change_worked("h-later.txt")
    assert not [r for r in harness.results if r.item.url.endswith(harness.url_path("h.txt"))]
    assert harness.get("varnish", "h.txt") == (200, b"old")


async def test_a_replayed_notice_is_refused(harness: Harness, listener) -> None:  # type: ignore[no-untyped-def]
    _, port = listener
    notice = make_notice(
        harness.site.name, _secret(harness), f"http://{HOST}{harness.url_path('r.txt')}"
    )
    assert isinstance(await send_notice("127.0.0.1", port, notice), PurgeAccepted)
    again = await send_notice("127.0.0.1", port, notice)
    assert isinstance(again, Error) and again.code == ErrorCode.NOT_AUTHORIZED
    assert "replayed" in again.detail


async def test_an_oversize_frame_is_refused_and_closed(harness: Harness, listener) -> None:  # type: ignore[no-untyped-def]
    _, port = listener
    framed = await open_framed("127.0.0.1", port)
    payload = msgspec.msgpack.encode({"type": "purge_notice", "site": "x" * 100_000})
    framed.transport.write(struct.pack(">I", len(payload)) + payload)
    answer = await framed.receive()
    assert isinstance(answer, Error) and answer.code == ErrorCode.BAD_MESSAGE
    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
        await framed.receive()
    await framed.aclose()
    assert harness.store.queued_purges() == 0


async def test_a_client_that_half_closes_after_its_notice_still_gets_the_answer(  # type: ignore[no-untyped-def]
    harness: Harness, listener
) -> None:
    """Like `nc -N`: send the notice, shut down the sending side, then read the answer."""
    import socket

    from relaysync.protocol.framing import decode_payload, encode_frame

    _, port = listener
    harness.write("half.txt", b"half")  # the caches refresh it from the origin: it must exist
    url = f"http://{HOST}{harness.url_path('half.txt')}"
    notice = make_notice(harness.site.name, _secret(harness), url)

    def exchange() -> object:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(encode_frame(notice))
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        (length,) = struct.unpack(">I", data[:4])
        return decode_payload(data[4 : 4 + length])

    answer = await anyio.to_thread.run_sync(exchange)
    assert isinstance(answer, PurgeAccepted)


async def test_a_prefix_no_cache_can_purge_is_refused(harness: Harness, listener) -> None:  # type: ignore[no-untyped-def]
    """A site fed only by the listener (no mapping, so no job log lists its paths) with nginx
    and Squid, which take no bans: a prefix notice would purge nothing there."""
    _, port = listener
    harness.store.update_site(harness.site.id, mapping=None)
    harness.purger.reload_sites()
    answer = await send_notice(
        "127.0.0.1", port, make_notice(harness.site.name, _secret(harness), "docs", "prefix")
    )
    assert isinstance(answer, Error) and answer.code == ErrorCode.PREFIX_NOT_EXPANDABLE, answer
    assert "nginx, squid" in answer.detail
    assert harness.store.queued_purges() == 0
