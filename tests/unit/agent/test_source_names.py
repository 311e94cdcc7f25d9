"""SourceMapping: a name that is not valid UTF-8 is left out with a warning and never stops the source.

scandir gives such a name as a str with lone surrogates, which msgpack (journal) and SQLite
(manifest) refuse to encode: before, the UnicodeEncodeError stopped the mapping, and the agent
with it, again on every restart.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import anyio
import pytest

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch.watcher import FsEvent

WAIT_S = 10.0
BAD = os.fsdecode(b"caf\xe9.html")  # a Latin-1 name from an old upload


def _mapping(tmp_path: Path) -> tuple[SourceMapping, Path]:
    root = tmp_path / "src"
    root.mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    return SourceMapping(spec, tmp_path / "state"), root


def _write_old(path: Path, text: str) -> None:
    path.write_text(text)
    past = time.time_ns() - 10 * 10**9  # not "hot": a scan journals it at once
    os.utime(path, ns=(past, past))


def _paths(mapping: SourceMapping) -> list[str]:
    return [r.path for r in mapping.journal.read(0)]


def test_a_name_that_is_not_utf8_is_left_out_of_scans_and_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relaysync.watch.filters")
    mapping, root = _mapping(tmp_path)
    _write_old(root / "good.html", "replicate me")
    _write_old(root / BAD, "x")
    (root / "old").mkdir()
    _write_old(root / "old" / BAD, "x")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)  # the initial scan
            (root / os.fsdecode(b"new\xe9.html")).write_text("created while watched")
            (root / "marker").write_text("m")  # inotify events are ordered
            with anyio.fail_after(WAIT_S):
                while "marker" not in _paths(mapping):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
        assert sorted(_paths(mapping)) == ["good.html", "marker", "old"]
    finally:
        mapping.close()
    assert (
        f"{root}/caf\\xe9.html is not valid UTF-8, so it is not replicated. Rename" in caplog.text
    )
    assert f"{root}/new\\xe9.html is not valid UTF-8" in caplog.text


def test_a_change_that_cannot_be_journaled_costs_itself_only(tmp_path: Path) -> None:
    mapping, root = _mapping(tmp_path)
    _write_old(root / "good.html", "g")
    _write_old(root / BAD, "x")
    os.symlink(os.fsencode(BAD), os.fsencode(root / "link"))  # a target the journal cannot hold
    events = [
        FsEvent(kind="write", path=BAD),
        FsEvent(kind="symlink", path="link"),
        FsEvent(kind="move", path="good.html", new_path=BAD),
        FsEvent(kind="write", path="good.html"),
    ]

    async def main() -> None:
        await mapping._record(events)

    try:
        anyio.run(main)
        assert _paths(mapping) == ["good.html"]
        assert mapping.manifest.get("good.html") is not None
    finally:
        mapping.close()
