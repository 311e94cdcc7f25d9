"""A target's kept partials after a catch-up by comparison, over a real socket (plain link,
in-process agents' parts): one whose version the source no longer has goes, one the source
still has is resumed."""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import xxhash
from tests.component.agent._pair import (
    SRC,
    TGT,
    peer_server,
    plain_link,
    source_mapping,
    target_folder,
)

from relaysync.agent.source import SourceMapping
from relaysync.constants import CHUNK_BYTES, TEMP_PREFIX
from relaysync.protocol.messages import (
    AnyMessage,
    FileChunk,
    FileStart,
    Partial,
)
from relaysync.transfer._link_session import _Session
from relaysync.transfer.link_ends import TargetAddress
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.sender import TargetLink
from relaysync.transfer.target_folder import RESUME_MIN_BYTES, TargetFolder
from relaysync.watch._fsevent import FsEvent

BIG = RESUME_MIN_BYTES + CHUNK_BYTES  # gets a named, resumable partial
HELD = 4 * CHUNK_BYTES  # what the target kept of it when its link went


def _cut_off(folder: TargetFolder, path: str, data: bytes) -> None:
    """`data` was being received at `path` (from an earlier journal of the source) when the link
    went: the target keeps the first HELD bytes, to resume."""
    start = FileStart(
        seq=7,
        path=path,
        size=len(data),
        mode=0o644,
        mtime_ns=1,
        expected_hash=xxhash.xxh3_128(data).digest(),
    )
    chunks: list[AnyMessage] = [
        FileChunk(seq=7, offset=o, data=data[o : o + CHUNK_BYTES])
        for o in range(0, HELD, CHUNK_BYTES)
    ]
    session = ReceiverSession(folder, "an-older-journal", lambda *_: None)
    assert session.apply_batch([start, *chunks]) == []
    session.close()
    assert [(p.path, p.size) for p in folder.list_partials()] == [(path, HELD)]


def _staged_bytes(root: Path) -> dict[str, int]:
    """The temp files (partials) under root and their sizes: what they hold of the disk (a
    file removed or replaced by the receiver between the listing and its stat is left out)."""
    sizes = {}
    for p in root.rglob("*"):
        if p.name.startswith(TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                sizes[str(p.relative_to(root))] = p.stat().st_size
    return sizes


def _scan(source: SourceMapping) -> None:
    """Journal the source tree (files backdated: a scan holds back files written this second)."""
    earlier = time.time_ns() - 10 * 10**9
    for p in source.root.rglob("*"):
        os.utime(p, ns=(earlier, earlier))

    async def scan() -> None:
        await source._record([FsEvent(kind="rescan", path="")])

    anyio.run(scan)


class _ObservedLink(TargetLink):
    """A TargetLink that counts its finished comparisons (the test waits for one)."""

    compares = 0

    async def _catch_up_by_compare(self, session: _Session) -> None:
        await super()._catch_up_by_compare(session)
        self.compares += 1


def _sync_once(
    source: SourceMapping, folder: TargetFolder, settled: Callable[[], bool] = lambda: True
) -> _ObservedLink:
    """Scan the source, connect its link to the target, and return once a comparison ended, the
    target's watermark caught up, and `settled()` holds (30 s bound for all)."""
    server = peer_server(folder)
    links: list[_ObservedLink] = []

    _scan(source)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            link = plain_link(source, port, cls=_ObservedLink)
            links.append(link)
            tg.start_soon(link.serve)
            with anyio.fail_after(30):
                while (
                    link.compares < 1
                    or folder.watermark(source.journal.journal_id) < source.applied_seq
                    or not settled()
                ):
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    return links[0]


@pytest.mark.parametrize(
    "case", ["file deleted", "directory deleted", "replaced by the version held"]
)
def test_a_catch_up_comparison_removes_a_partial_whose_version_the_source_no_longer_has(
    tmp_path: Path, case: str
) -> None:
    """Nothing else would ever remove it: the comparison finds the trees equal (or the path on
    neither side), so no op for that path reaches the target, and a restart keeps every partial
    the target lists. Before the fix, 4 MiB stayed per such file, for ever."""
    source, folder = source_mapping(tmp_path), target_folder(tmp_path)
    (source.root / "keep.txt").write_text("the rest of the tree")
    path = {
        "file deleted": "big.bin",
        "directory deleted": "gone/deeper/big.bin",
        "replaced by the version held": "big.bin",
    }[case]
    _cut_off(folder, path, os.urandom(BIG))
    if case == "replaced by the version held":
        # The source went back to the version the target holds, and the target has every record
        # (so nothing is replayed): only the periodic comparison sees this mapping now.
        (source.root / "big.bin").write_bytes(os.urandom(BIG))
        _scan(source)
        for name in ("big.bin", "keep.txt"):
            (folder.root / name).write_bytes((source.root / name).read_bytes())
            entry = source.manifest.get(name)
            assert entry is not None
            folder.manifest.put_many([entry])
        folder.set_watermark(source.journal.journal_id, source.applied_seq)
    assert sum(_staged_bytes(folder.root).values()) == HELD

    # the partials go after the watermark is saved, in the same Checkpoint: wait for them to go
    # (a bound, not a pause: without the fix, fail_after fires)
    _sync_once(source, folder, settled=lambda: not _staged_bytes(folder.root))

    assert (folder.root / "keep.txt").read_text() == "the rest of the tree"
    assert _staged_bytes(folder.root) == {}
    assert folder.list_partials() == () and folder.partial_files() == frozenset()


def test_a_partial_of_the_version_the_source_has_is_resumed_not_removed(tmp_path: Path) -> None:
    source, folder = source_mapping(tmp_path), target_folder(tmp_path)
    data = os.urandom(BIG)
    (source.root / "big.bin").write_bytes(data)
    _cut_off(folder, "big.bin", data)

    link = _sync_once(source, folder)

    assert (folder.root / "big.bin").read_bytes() == data
    assert link.bytes_sent < BIG - HELD + CHUNK_BYTES  # the held part was not sent again
    assert _staged_bytes(folder.root) == {}


def test_a_partial_at_a_path_journaled_after_the_comparisons_head_stays(tmp_path: Path) -> None:
    """A record after the head may still send that version (read from disk when it goes): its
    partial is the one that record resumes, so it is not named obsolete; the next comparison,
    once the record is sent, decides."""
    source = source_mapping(tmp_path)
    (source.root / "big.bin").write_bytes(b"now small")
    _scan(source)
    link = TargetLink(
        source,
        TargetAddress(node_id=TGT, name="t", resolve=lambda: "127.0.0.1:1"),
        ssl.create_default_context(),
        node_id=SRC,
        name="s",
    )
    partials = [
        Partial(path="big.bin", hash=b"\x01" * 16, size=HELD),
        Partial(path="elsewhere/big.bin", hash=b"\x02" * 16, size=HELD),
    ]
    head = source.applied_seq
    assert [r.path for r in link._obsolete_partials(partials, head)] == [
        "big.bin",
        "elsewhere/big.bin",
    ]
    assert [r.path for r in link._obsolete_partials(partials, head - 1)] == ["elsewhere/big.bin"]
