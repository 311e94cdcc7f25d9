"""A link sends the version a record journaled, or none (real SourceMapping, TargetFolder, peer
server and TargetLink over a socket; events fed through `SourceMapping._record`, so the order of
reads and writes is the test's).

The link reads a file when it sends its record: by then the path may hold another version (a log
rotated while the link was behind) or a rewrite half done. Sent as that record's version, the
target kept it: a later Rename carried it to the old log's name, and a rewrite that ends as the
journaled version is journaled as an `attr` change only (/work/notes/s25/send-review.md, defects
1, 2 and 5).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from tests.component.agent._pair import TGT, peer_server, plain_link, source_mapping, target_folder

from relaysync.agent.source import SourceMapping
from relaysync.watch._fsevent import FsEvent

BOUND_S = 30.0  # every wait below polls for its condition under this bound
MODES = ["realtime", "manual"]


async def _until(done: Callable[[], bool]) -> None:
    with anyio.fail_after(BOUND_S):
        while not done():
            await anyio.sleep(0.02)


def _cool(path: Path, secs: float = 10.0) -> None:
    """Backdate a file's mtime: no scan holds it back as hot."""
    t = time.time_ns() - int(secs * 1e9)
    os.utime(path, ns=(t, t))


class _Releases:
    """The operator's releases of a held (manual) mapping; nothing to do in realtime."""

    def __init__(self, source: SourceMapping, mode: str) -> None:
        self.source, self.mode, self.n = source, mode, 0

    def __call__(self) -> None:
        if self.mode != "realtime":
            self.n += 1
            self.source.set_release(self.n)


def _acked(source: SourceMapping, seq: int) -> Callable[[], bool]:
    return lambda: source._acks.get(TGT, 0) >= seq


def _text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


@pytest.mark.parametrize("mode", MODES)
def test_a_log_rotated_while_the_link_is_behind_keeps_its_last_lines_under_the_old_name(
    tmp_path: Path, mode: str
) -> None:
    """logrotate's create mode: `mv app.log app.log.1; create app.log` after a write of app.log
    was journaled but before the link read it. Before the fix the link sent the new log under the
    old write's seq and the Rename moved it: app.log.1 on the target held the new log, for good
    in manual mode (no comparison runs there)."""
    source, folder = source_mapping(tmp_path, mode=mode), target_folder(tmp_path)
    log, rotated = source.root / "app.log", source.root / "app.log.1"
    log.write_text("line 1\n")
    _cool(log)
    release = _Releases(source, mode)

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            link = plain_link(source, port, compare_interval_s=3600)
            tg.start_soon(link.serve)
            release()
            await _until(lambda: _text(folder.root / "app.log") == "line 1\n")
            with open(log, "a") as f:
                f.write("line 2\n")
            await source._record([FsEvent(kind="write", path="app.log")])
            # rotated before the link reads the write (no await in between)
            log.rename(rotated)
            log.write_text("first line of the new log\n")
            await source._record(
                [
                    FsEvent(kind="move", path="app.log", new_path="app.log.1"),
                    FsEvent(kind="write", path="app.log"),
                ]
            )
            release()
            await _until(_acked(source, source.journal.last_seq))
            await _until(lambda: _text(folder.root / "app.log.1") == "line 1\nline 2\n")
            assert _text(folder.root / "app.log") == "first line of the new log\n"
            assert link.failures == 0
            tg.cancel_scope.cancel()

    anyio.run(main)
    source.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_file_read_half_rewritten_is_not_committed_and_is_read_again(
    tmp_path: Path, mode: str
) -> None:
    """Version B is journaled, then rewritten with the same content: the link reads it truncated
    and 400 bytes in, a consistent snapshot. Before the fix that went as B's version; the
    rewrite's close found the journaled hash again, so only an `attr` record followed and the
    target kept the torn 400 bytes (manual mode: for good)."""
    source, folder = source_mapping(tmp_path, mode=mode), target_folder(tmp_path)
    page, tgt = source.root / "page.html", folder.root / "page.html"
    page.write_bytes(b"A" * 1000)
    _cool(page)
    release = _Releases(source, mode)

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            link = plain_link(source, port, compare_interval_s=3600)
            tg.start_soon(link.serve)
            release()
            await _until(lambda: tgt.exists() and tgt.read_bytes() == b"A" * 1000)
            page.write_bytes(b"B" * 1000)
            await source._record([FsEvent(kind="write", path="page.html")])
            with open(page, "r+b") as w:  # the same content again, half written when read
                w.truncate(0)
                w.write(b"B" * 400)
            release()
            await _until(_acked(source, source.journal.last_seq))
            assert tgt.read_bytes() == b"A" * 1000  # the torn read did not go
            assert "page.html" in link.unreadable  # kept, to be read again
            page.write_bytes(b"B" * 1000)  # the rewrite ends: the journaled version again
            await source._record([FsEvent(kind="write", path="page.html")])
            assert source.journal.read(0, 100)[-1].op == "attr"
            release()
            await _until(lambda: tgt.read_bytes() == b"B" * 1000)
            await _until(lambda: "page.html" not in link.unreadable)
            tg.cancel_scope.cancel()

    anyio.run(main)
    source.close()


def test_files_lacking_their_delta_base_go_whole_without_a_failed_hop(tmp_path: Path) -> None:
    """K files whose delta base the target lacks, in one batch. Before the fix each
    BASE_MISMATCH ended the session as a failed hop (reported to the master, which re-plans
    around the target from the 2nd), the backoff doubled, and each session sent the batch again
    from its start: K(K+1)/2 files' bytes."""
    k, size = 5, 200_000
    source, folder = source_mapping(tmp_path), target_folder(tmp_path)
    names = [f"big{i}.bin" for i in range(k)]
    for name in names:
        (source.root / name).write_bytes(os.urandom(size))
        _cool(source.root / name)
    reports: list[tuple[str, str, int]] = []

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            link = plain_link(
                source, port, on_failure=lambda node, err, n: reports.append((node, err, n))
            )
            link.options.signatures = source.signatures
            tg.start_soon(link.serve)
            await _until(_acked(source, source.journal.last_seq))
            for name in names:  # the target's copies are not the versions its manifest names
                os.utime(folder.root / name, ns=(1, 1))
            for name in names:  # one save of each, journaled in one batch: each a delta
                with open(source.root / name, "r+b") as f:
                    f.seek(1000)
                    f.write(b"edit")
                _cool(source.root / name, 5)
            await source._record([FsEvent(kind="write", path=n) for n in names])
            before = link.bytes_sent
            await _until(_acked(source, source.journal.last_seq))
            sent = link.bytes_sent - before
            assert sent < 2 * k * size, sent  # each file once, whole (not the batch K times)
            assert link.failures == 0
            tg.cancel_scope.cancel()

    anyio.run(main)
    source.close()
    assert reports == []
    for name in names:
        assert (folder.root / name).read_bytes() == (source.root / name).read_bytes()
