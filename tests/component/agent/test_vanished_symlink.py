"""A symlink that is gone (or is something else) by the time its journaled record is sent: the
link goes on, and the changes after it arrive."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
from tests.component.agent._pair import peer_server, plain_link, target_folder
from tests.component.agent.test_link_lifecycle import _source_in

from relaysync.watch._fsevent import FsEvent


def _old(path: Path) -> None:
    earlier = time.time_ns() - 10 * 10**9
    os.utime(path, ns=(earlier, earlier), follow_symlinks=False)  # not being written


@pytest.mark.parametrize("then", ["removed", "replaced by a file", "replaced by a dir"])
def test_a_symlink_gone_when_its_record_is_sent_does_not_break_the_link(
    tmp_path: Path, then: str
) -> None:
    source = _source_in(tmp_path, "manual")
    (source.root / "a.txt").write_text("a")
    _old(source.root / "a.txt")
    os.symlink("a.txt", source.root / "ln")
    _old(source.root / "ln")
    folder = target_folder(tmp_path)
    ln = source.root / "ln"

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        assert "symlink" in [r.op for r in source.journal.read(0, 100)]
        ln.unlink()  # after it was journaled, before the link reads its record
        if then == "replaced by a file":
            ln.write_text("now a file")
        elif then == "replaced by a dir":
            ln.mkdir()
        if then != "removed":
            _old(ln)
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            link = plain_link(source, port)
            tg.start_soon(link.serve)
            source.set_release(source.journal.last_seq)
            with anyio.fail_after(20):
                while not (folder.root / "a.txt").exists() or not os.path.lexists(
                    folder.root / "ln"
                ):
                    await anyio.sleep(0.02)
            (source.root / "b.txt").write_text("later")
            _old(source.root / "b.txt")
            await source._record([FsEvent(kind="rescan", path="")])
            source.set_release(source.journal.last_seq)
            with anyio.fail_after(20):
                while not (folder.root / "b.txt").exists() or os.path.islink(folder.root / "ln"):
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        assert link.failures == 0

    anyio.run(main)
    assert (folder.root / "b.txt").read_text() == "later"
    assert os.path.lexists(folder.root / "ln") == (then != "removed")
    assert os.path.isfile(folder.root / "ln") == (then == "replaced by a file")
    assert os.path.isdir(folder.root / "ln") == (then == "replaced by a dir")
