"""SourceMapping: a writer that opens a file a scan found, before the batch is journaled, holds
it (the hold asks at its own time, not the scan's).

Written at stop 36 for a scan-time lease probe that was then reverted: its first version took
the scan's "no writer" whatever happened to the path before the hold, and journaled the half
file in each case below (the review's repros). They guard any later attempt at the same saving.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch import scanner
from relaysync.watch.watcher import FsEvent

PATH = "d/f"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "src" / "d").mkdir(parents=True)
    (tmp_path / "src" / PATH).write_bytes(b"complete v1\n" * 100)
    return tmp_path / "src"


@pytest.fixture
def mapping(root: Path, tmp_path: Path) -> Iterator[SourceMapping]:
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    m = SourceMapping(spec, tmp_path / "state", hot_file_s=0.0, rescan_interval_s=0)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def writers() -> Iterator[list[object]]:
    opened: list[object] = []
    yield opened
    for w in opened:
        w.close()  # type: ignore[attr-defined]


def _journaled(mapping: SourceMapping) -> set[str]:
    return {r.path for r in mapping.journal.read(0) if r.op == "write"}


def _open_writer(root: Path, how: str) -> object:
    if how == "writer-opens-and-writes":
        writer = open(root / PATH, "r+b")  # noqa: SIM115 - closed by the fixture
        writer.write(b"HALF")
    elif how == "replaced-by-an-open-file":
        writer = open(root / "d" / ".tmp", "wb")  # noqa: SIM115 - closed by the fixture
        writer.write(b"half of v2")
        os.rename(root / "d" / ".tmp", root / PATH)
    else:  # opened, nothing written yet
        writer = open(root / PATH, "r+b")  # noqa: SIM115 - closed by the fixture
    writer.flush()
    return writer


@pytest.mark.parametrize(
    "how", ["writer-opens-and-writes", "replaced-by-an-open-file", "writer-opens-only"]
)
@pytest.mark.anyio
async def test_a_writer_between_the_scan_and_the_hold_is_held(
    root: Path,
    mapping: SourceMapping,
    how: str,
    writers: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = mapping._hold_hot

    async def after_the_scan(*args: object) -> object:
        writers.append(_open_writer(root, how))
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(mapping, "_hold_hot", after_the_scan)
    await mapping._record([FsEvent(kind="rescan", path="", is_dir=True)])
    assert PATH in mapping._held and PATH not in _journaled(mapping)


@pytest.mark.anyio
async def test_a_writer_that_opens_the_file_as_the_scan_reads_it_is_held(
    root: Path, mapping: SourceMapping, writers: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file takes a while to read: a writer that opened it meanwhile (a child process
    in the review's repro, 128 MiB) is seen, and the hash, which may hold part of its write, is
    not journaled as final."""
    hash_file = scanner.hash_file

    def a_writer_opens_as_it_is_read(*args: object, **kwargs: object) -> bytes:
        digest = hash_file(*args, **kwargs)  # type: ignore[arg-type]
        writers.append(open(root / PATH, "r+b"))  # noqa: SIM115 - closed by the fixture
        return digest

    monkeypatch.setattr(scanner, "hash_file", a_writer_opens_as_it_is_read)
    await mapping._record([FsEvent(kind="rescan", path="", is_dir=True)])
    assert PATH in mapping._held and PATH not in _journaled(mapping)
