import asyncio
import itertools
import socket
import ssl
import string
import struct
import sys
import time
from functools import partial

import anyio
import pytest

from relaysync.constants import PREAUTH_MAX_MESSAGE_BYTES
from relaysync.errors import FrameTooLarge, ProtocolError
from relaysync.protocol import framing
from relaysync.protocol.connection import open_framed, serve_framed, wrap_accepted
from relaysync.protocol.framing import (
    COALESCE_BYTES,
    PAUSE_READING_BYTES,
    FramedStream,
    FrameProtocol,
    decode_payload,
    encode_frame,
    frames_of,
)
from relaysync.protocol.messages import (
    MAX_ERASE_KEEP,
    MAX_LISTING_ENTRIES,
    MAX_PARTIALS,
    MAX_REPORT_RECORDS,
    MAX_SUBTREE_NODES,
    Ack,
    AnyMessage,
    Checkpoint,
    CommitRecord,
    CommitReport,
    DigestReply,
    DirEntry,
    DirListing,
    Erase,
    FileChunk,
    FileEnd,
    FileStart,
    Hello,
    MappingState,
    NodeMark,
    Partial,
)


def test_round_trip() -> None:
    m = FileStart(seq=1, path="a/b", size=3, mode=0o644, mtime_ns=7)
    assert decode_payload(encode_frame(m)[4:]) == m


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x81\xa4type\xa4nope"])
def test_garbage_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(payload)


def test_validate_runs_after_decode() -> None:
    bad = FileEnd(seq=1, hash=b"short")
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(bad)[4:])
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(FileChunk(seq=1, offset=-1, data=b""))[4:])


def test_small_frames_are_joined_and_large_payloads_kept_apart() -> None:
    big = FileChunk(seq=2, offset=0, data=b"x" * COALESCE_BYTES)
    messages = [
        FileStart(seq=1, path="a", size=3, mode=0o644, mtime_ns=7),
        FileChunk(seq=1, offset=0, data=b"abc"),
        FileEnd(seq=1, hash=b"h" * 32),
        big,
        FileEnd(seq=2, hash=b"g" * 32),
    ]
    parts = frames_of(messages)
    # the three small frames and the big one's header in one buffer; the big payload alone; the tail
    assert len(parts) == 3
    assert bytes(parts[1]) == encode_frame(big)[4:]
    assert b"".join(parts) == b"".join(encode_frame(m) for m in messages)
    assert frames_of([]) == []


class _Transport(asyncio.Transport):
    """Records flow control; the protocol under test is fed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def _feed(protocol: FrameProtocol, data: bytes, piece: int) -> None:
    """Deliver `data` the way a transport does: into the protocol's buffer, `piece` bytes at a time."""
    i = 0
    while i < len(data):
        buf = protocol.get_buffer(-1)
        part = data[i : i + min(piece, len(buf))]  # a transport reads at most what fits
        buf[: len(part)] = part
        protocol.buffer_updated(len(part))
        i += len(part)


def _protocol(max_message_bytes: int = 4 * 1024 * 1024) -> tuple[FrameProtocol, _Transport]:
    protocol, transport = FrameProtocol(max_message_bytes), _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def test_oversize_frame_refused_before_reading_it() -> None:
    async def main() -> None:
        protocol, transport = _protocol(max_message_bytes=1024)
        _feed(protocol, struct.pack(">I", 10_000_000), 4)
        assert transport.paused  # nothing after the bad header is read
        with pytest.raises(FrameTooLarge):
            await protocol.next_message()

    anyio.run(main)


def test_frames_split_across_reads() -> None:
    async def main() -> None:
        protocol, _ = _protocol()
        frame = encode_frame(Hello(protocol_version=1, node_id="n", name="x", role="agent")) * 2
        _feed(protocol, frame, 1)
        protocol.connection_lost(None)
        framed = FramedStream(_Transport(), protocol)
        assert isinstance(await framed.receive(), Hello)
        assert isinstance(await framed.receive(), Hello)
        with pytest.raises(anyio.EndOfStream):
            await framed.receive()

    anyio.run(main)


@pytest.mark.parametrize("piece", [4099, 65_536, 1_000_003])
def test_frames_larger_than_the_buffer_arrive_whole(piece: int) -> None:
    async def main() -> None:
        protocol, _ = _protocol()
        chunks = [
            FileChunk(seq=1, offset=i, data=bytes([i % 251]) * (1024 * 1024 - i)) for i in range(5)
        ]
        _feed(protocol, b"".join(encode_frame(c) for c in chunks), piece)
        for chunk in chunks:
            message, size = await protocol.next_message()
            assert message == chunk and size == len(encode_frame(chunk))

    anyio.run(main)


def test_reading_pauses_while_the_consumer_lags_and_resumes() -> None:
    async def main() -> None:
        protocol, transport = _protocol()
        frame = encode_frame(FileChunk(seq=1, offset=0, data=b"x" * 1024 * 1024))
        _feed(protocol, frame * 20, len(frame))
        assert transport.paused and transport.pauses == 1
        for _ in range(20):
            await protocol.next_message()
        assert not transport.paused

    anyio.run(main)


def test_a_connection_lost_mid_frame_is_broken_not_clean() -> None:
    async def main() -> None:
        protocol, _ = _protocol()
        _feed(protocol, encode_frame(FileChunk(seq=1, offset=0, data=b"y" * 1000))[:500], 100)
        protocol.connection_lost(ConnectionResetError("reset by peer"))
        with pytest.raises(anyio.BrokenResourceError):
            await protocol.next_message()

    anyio.run(main)


def _held_bytes(messages: list[Erase]) -> int:
    """The Python objects the decoded messages hold (each distinct object once)."""
    seen: set[int] = set()
    total = 0
    for m in messages:
        for obj in (m, m.keep, *m.keep):
            if id(obj) not in seen:
                seen.add(id(obj))
                total += sys.getsizeof(obj)
    return total


def _tiny_names(n: int) -> tuple[str, ...]:
    names = ["".join(p) for p in itertools.product(string.ascii_letters, repeat=2)]
    return tuple(names[i % len(names)] for i in range(n))


def test_decoded_messages_waiting_for_the_consumer_stay_near_the_pause_bound() -> None:
    # Was: a frame counted as its wire bytes, but an Erase of 2-character names is ~20 times that
    # in objects: 300 MB held for one connection before reading paused (frames a plain link
    # accepts before it has authenticated, and nobody consuming them).
    frame = encode_frame(Erase(seq=1, path="", keep=_tiny_names(MAX_ERASE_KEEP)))
    assert len(frame) <= PREAUTH_MAX_MESSAGE_BYTES

    async def main() -> int:
        protocol, transport = _protocol(PREAUTH_MAX_MESSAGE_BYTES)
        while not transport.paused:  # the peer keeps sending; nobody consumes
            _feed(protocol, frame, len(frame))
        return _held_bytes([m for m, _, _ in protocol._ready])  # type: ignore[misc]

    held = anyio.run(main)
    assert held < 2 * PAUSE_READING_BYTES, (
        f"{held / 2**20:.0f} MiB of objects held for one connection"
    )


def test_one_read_of_many_small_frames_decodes_up_to_the_bound_and_delivers_them_all() -> None:
    frame = encode_frame(Erase(seq=1, path="", keep=_tiny_names(1000)))
    count = 20 * 1024 * 1024 // len(frame)  # far more than the bound in one read

    async def main() -> None:
        protocol, transport = _protocol()
        _feed(protocol, frame * count, len(frame) * count)
        assert transport.paused and len(protocol._ready) < count / 4  # the rest waits undecoded
        protocol.connection_lost(None)  # the peer is gone: what it sent still arrives, in order
        for _ in range(count):
            message, size = await protocol.next_message()
            assert isinstance(message, Erase) and size == len(frame)
        with pytest.raises(anyio.EndOfStream):
            await protocol.next_message()

    anyio.run(main)


def test_good_frames_left_undecoded_before_a_bad_one_are_delivered_first() -> None:
    # Was: the frames decoded in next_message (left in the buffer at the pause bound) were not
    # handed out when a bad frame followed them: it raised at once, losing a last Ack or Error.
    frame = encode_frame(Erase(seq=1, path="", keep=_tiny_names(1000)))
    count = 20 * 1024 * 1024 // len(frame)
    bad = b"\x00\x00\x00\x03\xc1\xc1\xc1"

    async def main() -> None:
        protocol, transport = _protocol()
        _feed(protocol, frame * count + bad, len(frame) * count + len(bad))
        assert transport.paused and len(protocol._ready) < count / 4  # the rest waits undecoded
        for _ in range(count):
            message, _ = await protocol.next_message()
            assert isinstance(message, Erase)
        with pytest.raises(ProtocolError):
            await protocol.next_message()

    anyio.run(main)


@pytest.mark.parametrize(
    "message",
    [
        Erase(seq=1, path="", keep=("a",) * (MAX_ERASE_KEEP + 1)),
        Ack(
            mapping_id=1,
            watermark=1,
            subtree=(NodeMark(node_id="", watermark=0),) * (MAX_SUBTREE_NODES + 1),
        ),
        MappingState(
            mapping_id=1,
            watermark=0,
            root_hash=b"",
            partials=(Partial(path="p", hash=b"", size=0),) * (MAX_PARTIALS + 1),
        ),
        CommitReport(
            mapping_id=1,
            source_node="s",
            target_node="t",
            watermark=0,
            records=(CommitRecord(seq=0, op="", path=""),) * (MAX_REPORT_RECORDS + 1),
        ),
        DigestReply(
            mapping_id=1,
            listings=(
                DirListing(
                    path="",
                    entries=(DirEntry(name="", kind="f", hash=b""),) * (MAX_LISTING_ENTRIES + 1),
                ),
            ),
        ),
        DigestReply(
            mapping_id=1,
            listings=(
                DirListing(
                    path="",
                    entries=(DirEntry(name="", kind="f", hash=b""),)
                    * (MAX_LISTING_ENTRIES // 2 + 1),
                ),
            )
            * 2,
        ),
    ],
    ids=["erase", "ack", "state", "report", "listing", "reply"],
)
def test_collections_longer_than_any_honest_sender_makes_are_refused(message: AnyMessage) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(message)[4:])


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("peer").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    client.check_hostname = False
    ca.configure_trust(client)
    return server, client


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_many_chunks_over_a_real_socket(use_uvloop: bool, use_tls: bool) -> None:
    """send_many on one side, receive on the other, across a loopback socket: in order, intact."""
    chunks = [
        FileChunk(seq=2, offset=i * 1_048_576, data=bytes([i]) * 1_048_576) for i in range(48)
    ]
    server_ctx, client_ctx = _tls_contexts() if use_tls else (None, None)

    async def main() -> None:
        received: list[object] = []

        async def on_socket(sock: socket.socket, remote: str) -> None:
            framed = await wrap_accepted(sock, ssl_ctx=server_ctx)
            try:
                while True:
                    received.append(await framed.receive())
            except anyio.EndOfStream:
                pass
            finally:
                await framed.aclose()

        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_framed, "127.0.0.1", 0, on_socket)
            client = await open_framed("127.0.0.1", port, ssl_ctx=client_ctx)
            assert (client.extra("ssl_object") is not None) == use_tls
            for i in range(0, len(chunks), 8):
                await client.send_many(list(chunks[i : i + 8]))
            await client.send(Checkpoint(seq=2))
            await client.aclose()
            with anyio.fail_after(30):
                while len(received) < len(chunks) + 1:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert received == [*chunks, Checkpoint(seq=2)]
        assert client.bytes_sent > 48 * 1_048_576

    anyio.run(main, backend_options={"use_uvloop": use_uvloop})


def test_change_time_is_optional_on_the_wire_and_checked() -> None:
    import msgspec

    # a peer that predates changed_at sends ops without it: they decode with 0 (unknown)
    old = msgspec.msgpack.encode({"type": "delete", "seq": 3, "path": "a"})
    decoded = decode_payload(old)
    assert decoded.changed_at == 0.0  # type: ignore[union-attr]
    m = FileStart(seq=1, path="a", size=0, mode=0o644, mtime_ns=0, changed_at=1_700_000_000.25)
    assert decode_payload(encode_frame(m)[4:]) == m
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ProtocolError, match="changed_at"):
            decode_payload(
                encode_frame(
                    FileStart(seq=1, path="a", size=0, mode=0, mtime_ns=0, changed_at=bad)
                )[4:]
            )


def test_every_sender_waiting_on_a_full_buffer_is_woken() -> None:
    """Several tasks send on one connection (replies, acks, pongs): a pause must not strand one."""

    async def main() -> None:
        protocol, transport = _protocol()
        protocol.pause_writing()
        woken: list[int] = []

        async def sender(i: int) -> None:
            await protocol.drain()
            woken.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(sender, i)
            await anyio.wait_all_tasks_blocked()  # every sender is parked in drain()
            assert woken == []
            protocol.resume_writing()
        assert sorted(woken) == [0, 1, 2]

    anyio.run(main)


def _tight_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair whose kernel buffers are small: a few KiB unread fill them."""
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return ours, peer


def test_a_peer_that_reads_nothing_fails_the_send_instead_of_holding_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stopped or hung peer (its process, or its disk) takes no bytes: the sender's drain
    gives up after SEND_STALL_TIMEOUT_S and drops the connection, as a receive does after
    RECEIVE_TIMEOUT_S of silence. Before, it waited for good."""
    monkeypatch.setattr(framing, "SEND_STALL_TIMEOUT_S", 0.5)
    monkeypatch.setattr(framing, "_DRAIN_CHECK_S", 0.05)
    chunk = FileChunk(seq=1, offset=0, data=b"x" * 256 * 1024)  # over the transport's high mark

    async def main() -> None:
        ours, peer = _tight_pair()
        try:
            framed = await wrap_accepted(ours)
            with anyio.fail_after(30), pytest.raises(anyio.BrokenResourceError, match="took none"):
                for _ in range(64):
                    await framed.send(chunk)
            assert framed.transport.is_closing()
        finally:
            peer.close()

    anyio.run(main)


def test_a_slow_peer_is_no_stalled_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that reads, however slowly, keeps the connection: only no progress at all for
    SEND_STALL_TIMEOUT_S fails a send."""
    monkeypatch.setattr(framing, "SEND_STALL_TIMEOUT_S", 0.5)
    monkeypatch.setattr(framing, "_DRAIN_CHECK_S", 0.05)
    chunk = FileChunk(seq=1, offset=0, data=b"x" * 256 * 1024)
    total = 4 * len(chunk.data)

    async def main() -> None:
        ours, peer = _tight_pair()
        got = 0

        def read_slowly() -> None:  # about 2 MB/s in 32 KiB reads: each step well inside 0.5 s
            nonlocal got
            while got < total:
                data = peer.recv(32 * 1024)
                if not data:
                    return
                got += len(data)
                time.sleep(0.015)

        framed = await wrap_accepted(ours)
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(anyio.to_thread.run_sync, read_slowly, abandon_on_cancel=True))
            with anyio.fail_after(60):
                for _ in range(4):
                    await framed.send(chunk)
                while got < total:
                    await anyio.sleep(0.01)
        framed.abort()
        peer.close()

    anyio.run(main)
