"""A relay whose spool's disk fills (source -> relay -> child, real sockets, plain links,
in-process agents' parts): its parent is told DISK_FULL, not a dropped link, and once there is
space the parent's resend reaches the child. Before the fix the torn batch stayed in the spool,
the resend was spooled after it, and the child's link failed at every retry (undecodable frame)
until the relay restarted."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from tests._tmpfs import mount_tmpfs, unmounted_at_exit
from tests.component.agent._pair import SRC, TGT, source_mapping
from tests.component.agent.test_relay_replay import _child_server, _links
from tests.component.agent.test_relay_unreadable import _feed, _folder, _relay_server, _until
from tests.component.agent.test_unreadable_source import _record

from relaysync.agent.source import SourceMapping
from relaysync.transfer.target_folder import TargetFolder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")


def _fill(disk: Path, leave: int) -> Path:
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return filler


def test_a_full_spool_is_told_disk_full_and_heals_when_space_is_back(tmp_path: Path) -> None:
    disk = tmp_path / "disk"  # the relay's spool alone on a 1 MiB file system
    with unmounted_at_exit(disk):
        mount_tmpfs(disk, "1m")
        source: SourceMapping = source_mapping(tmp_path)
        relay, child = _folder(tmp_path, "relay", SRC), _folder(tmp_path, "child", TGT)
        feed = _feed(disk, relay)
        commits: list[tuple[int, str]] = []
        parent_failures: list[str] = []
        first, second = os.urandom(100_000), os.urandom(400_000)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                relay_port = await tg.start(_relay_server(relay, feed).serve)
                child_port = await tg.start(_child_server(child, commits).serve)
                link, relay_link = _links(source, feed, (relay_port, child_port), [])
                link.on_failure = lambda _node, why, _n: parent_failures.append(why)
                tg.start_soon(link.serve)
                tg.start_soon(relay_link.serve)
                (source.root / "first.bin").write_bytes(first)
                await _record(source, "first.bin")
                await _until(lambda: (child.root / "first.bin").exists())
                filler = _fill(disk, 150_000)  # part of the next file fits: ENOSPC mid-write
                (source.root / "second.bin").write_bytes(second)
                await _record(source, "second.bin")
                await _until(lambda: any("disk full" in why for why in parent_failures))
                filler.unlink()
                await _until(lambda: _has(child, "second.bin", second))
                tg.cancel_scope.cancel()

        try:
            anyio.run(main)
        finally:
            source.close()
    assert all("DISK_FULL" in why for why in parent_failures), parent_failures
    assert (child.root / "first.bin").read_bytes() == first


def _has(folder: TargetFolder, name: str, data: bytes) -> bool:
    path = folder.root / name
    return path.exists() and path.read_bytes() == data
