"""A source's link to a target over a real socket (plain link, in-process agents' parts): how it
backs off from a target that keeps refusing, and what a scan ships."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from tests.component.agent._pair import (
    SRC,
    TGT,
    peer_server,
    plain_link,
    source_mapping,
    target_folder,
)

from relaysync.agent.source import SourceMapping
from relaysync.constants import (
    MAX_UNAUTHENTICATED,
    MAX_UNAUTHENTICATED_PER_ADDRESS,
    RECONNECT_MIN_S,
)
from relaysync.protocol.messages import MappingSpec, TargetSpec
from relaysync.transfer.receiver import ReceiverSession
from relaysync.watch._fsevent import FsEvent


def test_a_target_refusing_every_time_is_backed_off_from_and_reported_as_failing(
    tmp_path: Path,
) -> None:
    """The session opens, then the target refuses the same change each time (an immutable
    directory: even root cannot write there). Each failure counts: the master sees 1, 2, 3, 4
    (it re-plans around the target at 2) and the waits grow, instead of a new session every
    0.2 s reported as a first failure for ever."""
    source = source_mapping(tmp_path)
    (source.root / "d").mkdir()
    (source.root / "d" / "f").write_text("x")
    folder = target_folder(tmp_path)
    (folder.root / "d").mkdir()
    if (
        subprocess.run(["chattr", "+i", str(folder.root / "d")], capture_output=True).returncode
        != 0
    ):
        pytest.skip("chattr +i is not available on this file system")
    reported: list[tuple[float, int]] = []
    try:

        async def main() -> None:
            await source._record([FsEvent(kind="rescan", path="")])
            async with anyio.create_task_group() as tg:
                port = await tg.start(peer_server(folder).serve)
                link = plain_link(
                    source,
                    port,
                    on_failure=lambda node, err, count: reported.append((time.monotonic(), count)),
                )
                tg.start_soon(link.serve)
                with anyio.fail_after(30):
                    while len(reported) < 4:
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()

        anyio.run(main)
    finally:
        subprocess.run(["chattr", "-i", str(folder.root / "d")], check=False)
    assert [count for _, count in reported[:4]] == [1, 2, 3, 4]
    gaps = [b - a for (a, _), (b, _) in zip(reported[:3], reported[1:4], strict=True)]
    # Each gap is the wait, 0.2, 0.4, 0.8 s and so on (not 0.2 s each), plus the next session's
    # own time, which load stretches: only the lower bounds hold on a busy machine.
    waits_s = [RECONNECT_MIN_S * 2**i for i in range(3)]
    assert all(gap >= 0.95 * wait_s for gap, wait_s in zip(gaps, waits_s, strict=True)), gaps


def test_a_file_with_a_future_mtime_found_by_a_scan_is_shipped(tmp_path: Path) -> None:
    """A scan holds back files modified in the last moment (maybe still being written); a file
    whose mtime is ahead of the clock (copied from a host whose clock is fast) is not one of them."""
    source = source_mapping(tmp_path)
    (source.root / "future.html").write_text("future")
    ahead = time.time_ns() + 3600 * 10**9
    os.utime(source.root / "future.html", ns=(ahead, ahead))

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])

    anyio.run(main)
    assert {r.path for r in source.journal.read(0, 100)} == {"future.html"}
    assert not source._held


def _source_in(tmp: Path, mode: str) -> SourceMapping:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    spec = MappingSpec(
        mapping_id=1,
        name="m",
        source_node=SRC,
        source_path=str(src),
        targets=(TargetSpec(node_id=TGT, path="/t"),),
        durability="fast",
        mode=mode,
    )
    return SourceMapping(spec, tmp / "state")


def test_an_atomic_save_sent_late_reaches_the_target(tmp_path: Path) -> None:
    """An editor's save: write index.html.tmp, rename it over index.html, journaled as two
    records and sent after both happened (a manual release here; a link that is behind does the
    same). The temp file is gone when the link reads it, so the target never gets it; asked to
    rename what it lacks, the target has the source send index.html whole, instead of keeping
    the old version (a manual mapping never compares, so nothing else would repair it)."""
    source = _source_in(tmp_path, "manual")
    (source.root / "index.html").write_text("version 1")
    earlier = time.time_ns() - 10 * 10**9
    os.utime(source.root / "index.html", ns=(earlier, earlier))  # not a file being written
    folder = target_folder(tmp_path)

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            tg.start_soon(plain_link(source, port).serve)
            source.set_release(1)
            with anyio.fail_after(20):
                while not (folder.root / "index.html").exists():
                    await anyio.sleep(0.02)
            (source.root / "index.html.tmp").write_text("version 2")
            await source._record([FsEvent(kind="write", path="index.html.tmp")])
            (source.root / "index.html.tmp").rename(source.root / "index.html")
            await source._record(
                [FsEvent(kind="move", path="index.html.tmp", new_path="index.html")]
            )
            assert [r.op for r in source.journal.read(0, 100)][-2:] == ["write", "rename"]
            source.set_release(2)
            with anyio.fail_after(20):
                while (folder.root / "index.html").read_text() != "version 2":
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert (folder.root / "index.html").read_text() == "version 2"
    assert not (folder.root / "index.html.tmp").exists()


def test_a_session_the_target_restarts_is_not_reported_as_a_failed_hop(tmp_path: Path) -> None:
    """A target ends its session on purpose when it starts or stops relaying (or its link secret
    changes): its parent must reconnect without telling the master the hop failed. Twice in a
    row without traffic between made the master plan around a healthy hop."""
    source = source_mapping(tmp_path)
    folder = target_folder(tmp_path)
    reported: list[int] = []

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            server = peer_server(folder)
            port = await tg.start(server.serve)
            link = plain_link(
                source, port, on_failure=lambda node, err, count: reported.append(count)
            )
            tg.start_soon(link.serve)
            for _ in range(3):
                with anyio.fail_after(20):
                    while not (link.connected and 1 in server._active):
                        await anyio.sleep(0.02)
                link.connected = False
                await server.restart_session(1)
            with anyio.fail_after(20):  # and it comes back each time
                while not (link.connected and 1 in server._active):
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert reported == []


def test_a_failed_session_is_reported_with_the_address_it_dialled(tmp_path: Path) -> None:
    """The master ignores a failed hop whose address the child has left (it came back on a new
    port): each failure is reported with the address that session dialled, and a target that
    moves is dialled at its new address."""
    source = source_mapping(tmp_path)
    folder = target_folder(tmp_path)
    with socket.socket() as s:  # a port nobody listens on: refused
        s.bind(("127.0.0.1", 0))
        gone = f"127.0.0.1:{s.getsockname()[1]}"
    at = [gone]
    dialled: list[str] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            link = plain_link(
                source, port, on_failure=lambda node, err, n: dialled.append(link.target.dialled)
            )
            link.target.resolve = lambda: at[0]
            tg.start_soon(link.serve)
            with anyio.fail_after(20):
                while not dialled:
                    await anyio.sleep(0.01)
            at[0] = f"127.0.0.1:{port}"  # the master told the new address
            with anyio.fail_after(20):
                while not link.connected:
                    await anyio.sleep(0.01)
            assert link.target.dialled == at[0]
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert dialled and set(dialled) == {gone}


def _silent_from(address: str, port: int, count: int) -> list[socket.socket]:
    """`count` connections from source `address` that never say a word (a slowloris)."""
    out = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((address, 0))
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_one_address_holding_connections_open_does_not_lock_other_peers_out(tmp_path: Path) -> None:
    """A host opens as many connections as the peer server takes before they authenticate
    (MAX_UNAUTHENTICATED, 256) and says nothing on them: it gets its own quota (64), the rest
    are closed at accept, and a source from another address still authenticates and ships a
    file. Before the per-address quota, the 256 filled the server's cap and the source was
    closed at accept until they timed out."""
    source = source_mapping(tmp_path)
    (source.root / "index.html").write_text("served")
    earlier = time.time_ns() - 10 * 10**9
    os.utime(source.root / "index.html", ns=(earlier, earlier))
    folder = target_folder(tmp_path)
    held: list[socket.socket] = []

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            held.extend(
                await anyio.to_thread.run_sync(_silent_from, "127.0.0.2", port, MAX_UNAUTHENTICATED)
            )
            with anyio.fail_after(10):  # the listener has taken them all: the rest are closed
                while (
                    sum(_closed(s) for s in held)
                    < MAX_UNAUTHENTICATED - MAX_UNAUTHENTICATED_PER_ADDRESS
                ):
                    await anyio.sleep(0.02)
            tg.start_soon(plain_link(source, port).serve)
            with anyio.fail_after(5):  # well inside the silent ones' 10 s first-byte timeout
                while not (folder.root / "index.html").exists():
                    await anyio.sleep(0.02)
            assert sum(not _closed(s) for s in held) == MAX_UNAUTHENTICATED_PER_ADDRESS
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        for s in held:
            s.close()
    assert (folder.root / "index.html").read_text() == "served"


def test_the_seqs_sent_whole_are_forgotten_once_acknowledged(tmp_path: Path) -> None:
    """Each atomic save sent after its rename has the result go whole, noted by seq in
    `SendOptions.whole_file_seqs` (so a resend of that record goes whole too). Once the target
    acknowledged a seq it is never sent again: the note goes, so a link that lives for months
    does not keep one per atomic save."""
    saves = 30
    source = _source_in(tmp_path, "manual")
    index, tmp = source.root / "index.html", source.root / "index.html.tmp"
    index.write_text("version 0")
    earlier = time.time_ns() - 10 * 10**9
    os.utime(index, ns=(earlier, earlier))  # not a file being written
    folder = target_folder(tmp_path)
    noted: list[int] = []

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            link = plain_link(source, port)
            tg.start_soon(link.serve)
            for v in range(saves + 1):
                if v:  # an editor's save, released once both records are journaled
                    tmp.write_text(f"version {v}")
                    await source._record([FsEvent(kind="write", path="index.html.tmp")])
                    tmp.rename(index)
                    await source._record(
                        [FsEvent(kind="move", path="index.html.tmp", new_path="index.html")]
                    )
                last = source.journal.last_seq
                source.set_release(last)
                with anyio.fail_after(20):  # committed and acknowledged
                    while source._acks.get(TGT, -1) < last:
                        await anyio.sleep(0.02)
                assert (folder.root / "index.html").read_text() == f"version {v}"
                noted.append(len(link.options.whole_file_seqs))
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert max(noted) == 0, f"seqs noted to go whole, after each of {saves} saves: {noted}"


def test_a_session_the_target_ends_closes_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session ended by the target (a newer session of the mapping, a restart, a retirement)
    is cancelled. Its cleanup, which closes the half-received file and the staged ones, awaited
    a worker thread unshielded and so never ran: the files stayed open for the life of the
    process (found when a lock on partials stayed held for minutes)."""
    opened: list[int] = []
    closed: list[int] = []
    real_init, real_close = ReceiverSession.__init__, ReceiverSession.close
    monkeypatch.setattr(
        ReceiverSession,
        "__init__",
        lambda self, *args: (real_init(self, *args), opened.append(1))[0],
    )
    monkeypatch.setattr(
        ReceiverSession, "close", lambda self: (closed.append(1), real_close(self))[1]
    )
    source = source_mapping(tmp_path)
    folder = target_folder(tmp_path)

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            server = peer_server(folder)
            port = await tg.start(server.serve)
            tg.start_soon(plain_link(source, port).serve)
            with anyio.fail_after(20):  # the session made: a restart before it has none to close
                while 1 not in server._active or not opened:
                    await anyio.sleep(0.02)
            await server.restart_session(1)
            with anyio.fail_after(20):
                while not closed:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert closed
