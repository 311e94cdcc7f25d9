"""Defects found in review, each forced here so it stays fixed."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import anyio

from relaysync.agent.master_link import MasterLink, make_report
from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.protocol.framing import encode_frame
from relaysync.protocol.messages import (
    Ack,
    Checkpoint,
    CommitRecord,
    Erase,
    FileChunk,
    FileEnd,
    FileStart,
    Register,
    Symlink,
)
from relaysync.transfer import tls
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder


def test_erase_never_goes_through_a_symlink(folder: TargetFolder, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (folder.root / "local-link").symlink_to(outside)  # a target admin's link where a dir was
    s = ReceiverSession(folder, "j", lambda *_: None)
    s.apply_batch(
        [
            Symlink(seq=1, path="x", target=str(outside)),
            Erase(seq=2, path="x", keep=()),
            Erase(seq=3, path="local-link", keep=("a",)),
            Checkpoint(seq=3),
        ]
    )
    assert (outside / "precious.txt").read_text() == "keep me"


def test_a_refused_catch_up_file_does_not_drop_the_next_ones(folder: TargetFolder) -> None:
    import xxhash

    data = b"fine"
    digest = xxhash.xxh3_128(data).digest()
    msgs = [
        FileStart(seq=0, path="../bad", size=4, mode=0o644, mtime_ns=1),
        FileChunk(seq=0, offset=0, data=data),
        FileEnd(seq=0, hash=digest),
        FileStart(seq=0, path="ok.txt", size=4, mode=0o644, mtime_ns=1),
        FileChunk(seq=0, offset=0, data=data),
        FileEnd(seq=0, hash=digest),
        Checkpoint(seq=7),
    ]
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(msgs)
    assert replies == [Ack(mapping_id=1, watermark=7)]
    assert (folder.root / "ok.txt").read_bytes() == data


def test_big_commit_reports_are_split_into_small_frames() -> None:
    link = MasterLink(
        control_address="127.0.0.1:1",
        ctx=ssl.create_default_context(),
        master_node_id=None,
        node_id="n",
        name="n",
        register=Register(name="n", region="r", group="g", peer_address="x:1"),
        on_assignment=lambda a: None,
    )  # type: ignore[arg-type,return-value]
    records = tuple(
        CommitRecord(seq=0, op="mkdir", path=f"some/where/deep/directory-number-{i:06d}")
        for i in range(40_000)
    )

    async def main() -> None:
        link.report(make_report(1, "s" * 64, "t" * 64, 5, records))

    anyio.run(main)
    queued = [q.report for q in link.reports.unsent]
    frames = [encode_frame(r) for r in queued]
    assert sum(len(r.records) for r in queued) == 40_000
    assert max(len(f) for f in frames) < MAX_MESSAGE_BYTES / 4


def test_a_client_that_resets_at_once_does_not_stop_the_listener() -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    async def handler(stream: object) -> None:
        pass

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(tls.serve_tls, "127.0.0.1", 0, ctx, handler)
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", port))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            for _ in range(50):  # bounded: the listener must still accept
                await anyio.sleep(0.01)
            with anyio.fail_after(5):
                stream = await anyio.connect_tcp("127.0.0.1", port)
                await stream.aclose()
            tg.cancel_scope.cancel()

    anyio.run(main)


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True if the server closes `sock` within `within_s`; False if it is still open then."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_that_never_authenticate_are_capped_not_held_without_bound() -> None:
    """Each connection that has not authenticated holds a socket (and a task) for up to its
    handshake timeouts: past `max_unauthenticated` of them at once, more are closed at accept,
    and an authenticated one frees its place."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    release = anyio.Event()

    async def handler(stream: object) -> None:
        raise AssertionError("no TLS client in this test")

    async def plain_handler(framed: object) -> None:
        assert hasattr(framed, "allow_messages")
        framed.allow_messages(MAX_MESSAGE_BYTES)  # as peer_server does once the link secret checked
        await release.wait()

    def connect(port: int, first: bytes = b"") -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first:
            s.sendall(first)
        return s

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                lambda task_status: tls.serve_tls(
                    "127.0.0.1",
                    0,
                    ctx,
                    handler,
                    plain_handler=plain_handler,
                    max_unauthenticated=3,
                    task_status=task_status,
                )
            )
            silent = [connect(port) for _ in range(3)]  # say nothing: they wait for a first byte
            await anyio.sleep(0)  # noqa: ASYNC115 - let the listener take them
            extra = connect(port)
            assert await anyio.to_thread.run_sync(_closed_by_server, extra, 5.0)
            silent.pop().close()
            # once the server saw that one go, a plain client that authenticates gets in and,
            # authenticated, leaves its place: two of them fit beside the two silent ones
            with anyio.fail_after(10):
                while True:
                    first = connect(port, b"\x00")
                    if not await anyio.to_thread.run_sync(_closed_by_server, first, 0.3):
                        break
                    first.close()
            second = connect(port, b"\x00")
            assert not await anyio.to_thread.run_sync(_closed_by_server, second, 0.5)
            for s in [*silent, extra, first, second]:
                s.close()
            release.set()
            tg.cancel_scope.cancel()

    anyio.run(main)
