"""A relay whose parent replays what it spooled but did not commit (source -> relay -> child,
real sockets, plain links, in-process agents' parts).

The relay refuses a batch it has spooled, and forwarded, already (a transient failure: a full
disk): its watermark stays behind its spool's head, and its parent replays from the watermark.
The child has what is replayed; before the fix the relay took the replay for files the source
sent again (transfer/relay_retried.py) and forwarded it once more: a 3 MiB file committed on
the child once per refusal, and a replayed delta refused by the child (BASE_MISMATCH), reported
to the master as a failed hop.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.component.agent._pair import SECRET, SRC, TGT, source_mapping
from tests.component.agent.test_relay_unreadable import CHILD, _feed, _folder, _relay_server, _until
from tests.component.agent.test_unreadable_source import _record

from relaysync.agent.peer_server import PeerServer
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import AnyMessage, Checkpoint, CommitRecord, Error, ErrorCode
from relaysync.transfer import ops
from relaysync.transfer.link_ends import TargetAddress
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.relay import RelayFeed, RelayLink
from relaysync.transfer.sender import TargetLink
from relaysync.transfer.target_folder import TargetFolder

BIG_BYTES = 3 * 1024 * 1024


class _Refusing:
    """The relay refuses, `times` times, the batch that closes at `seq` (once it is known)."""

    def __init__(self, relay: TargetFolder, times: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.relay, self.times, self.seq, self.refused = relay, times, -1, 0
        real = ReceiverSession.apply_batch

        def apply_batch(session: ReceiverSession, messages: Sequence[AnyMessage]) -> Any:
            closes = any(isinstance(m, Checkpoint) and m.seq == self.seq for m in messages)
            if session.folder is self.relay and closes and self.refused < self.times:
                self.refused += 1  # the batch is spooled already: the child was sent it
                return [Error(code=ErrorCode.DISK_FULL, detail="injected", seq=self.seq)]
            return real(session, messages)

        monkeypatch.setattr(ReceiverSession, "apply_batch", apply_batch)


def _child_server(child: TargetFolder, commits: list[tuple[int, str]]) -> PeerServer:
    def reporter(
        _folder: TargetFolder, _journal: str
    ) -> Callable[[int, Sequence[CommitRecord]], None]:
        return lambda _watermark, records: commits.extend((r.seq, r.path) for r in records)

    return PeerServer(
        host="127.0.0.1",
        port=0,
        ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        node_id=CHILD,
        name="c",
        folders=lambda m: child if m == 1 else None,
        reporter=reporter,
    )


def _links(
    source: SourceMapping, feed: RelayFeed, ports: tuple[int, int], failures: list[str]
) -> tuple[TargetLink, RelayLink]:
    relay_port, child_port = ports
    link = TargetLink(
        source,
        TargetAddress(node_id=TGT, name="r", resolve=lambda: f"127.0.0.1:{relay_port}"),
        ssl.create_default_context(),
        node_id=SRC,
        name="s",
        options=ops.SendOptions(tls=False, link_secret=SECRET, signatures=source.signatures),
    )
    relay_link = RelayLink(
        feed,
        TargetAddress(node_id=CHILD, name="c", resolve=lambda: f"127.0.0.1:{child_port}"),
        ssl.create_default_context(),
        node_id=TGT,
        name="r",
        compare_interval_s=600,  # no comparison in the test: what the child gets is forwarded
        options=ops.SendOptions(tls=False, link_secret=SECRET),
        on_failure=lambda _node, why, _n: failures.append(why),
    )
    return link, relay_link


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, times: int, delta: bool) -> None:
    source = source_mapping(tmp_path)
    relay, child = _folder(tmp_path, "relay", SRC), _folder(tmp_path, "child", TGT)
    feed = _feed(tmp_path, relay)
    refusing = _Refusing(relay, times, monkeypatch)
    commits: list[tuple[int, str]] = []
    failures: list[str] = []
    data = bytearray(os.urandom(BIG_BYTES))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            relay_port = await tg.start(_relay_server(relay, feed).serve)
            child_port = await tg.start(_child_server(child, commits).serve)
            for link in _links(source, feed, (relay_port, child_port), failures):
                tg.start_soon(link.serve)
            if delta:  # the child holds the file: the change goes as a delta
                (source.root / "big.bin").write_bytes(data)
                await _record(source, "big.bin")
                await _until(lambda: feed.committed >= source.journal.last_seq)
                await _until(lambda: (child.root / "big.bin").exists())
                data[100:200] = b"x" * 100
            (source.root / "big.bin").write_bytes(data)
            refusing.seq = source.journal.last_seq + 1
            await _record(source, "big.bin")
            await _until(lambda: feed.committed >= refusing.seq)  # the parent's replay went in
            (source.root / "after.txt").write_text("spooled after the replay")
            await _record(source, "after.txt")
            await _until(lambda: (child.root / "after.txt").exists())  # the replay was read
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        source.close()
    assert refusing.refused == times
    assert (child.root / "big.bin").read_bytes() == data
    assert failures == []
    assert [c for c in commits if c == (refusing.seq, "big.bin")] == [(refusing.seq, "big.bin")]


def test_a_replay_after_a_refused_batch_is_not_forwarded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix: refused 4 times (every retry while a disk stays full), committed 5 times
    on the child (15 MiB for a 3 MiB file)."""
    _run(tmp_path, monkeypatch, times=4, delta=False)


def test_a_replayed_delta_is_not_refused_by_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix the replayed DeltaStart reached a child holding the new version already:
    BASE_MISMATCH, the relay's link to it failed and said so to the master."""
    _run(tmp_path, monkeypatch, times=1, delta=True)
