"""SourceMapping keeps a small file's content for as many takes as it has links in realtime
mode, and for none in manual or reserved mode (their sends wait for a release, long after an
entry's time is up: kept, they only held memory); the content goes with the mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, TargetSpec
from relaysync.watch.content_cache import ContentCache
from relaysync.watch.scanner import scan


def _source(tmp_path: Path, mode: str, cache: ContentCache) -> SourceMapping:
    root = tmp_path / "src"
    root.mkdir(exist_ok=True)
    spec = MappingSpec(
        mapping_id=7,
        name="m",
        source_node="s",
        source_path=str(root),
        targets=(TargetSpec(node_id="t1", path="/t1"), TargetSpec(node_id="t2", path="/t2")),
        mode=mode,
    )
    return SourceMapping(spec, tmp_path / f"state-{mode}", content=cache)


@pytest.mark.parametrize(("mode", "readers"), [("realtime", 2), ("manual", 0), ("reserved", 0)])
def test_content_is_kept_for_each_link_of_a_realtime_mapping_only(
    tmp_path: Path, mode: str, readers: int
) -> None:
    cache = ContentCache()
    source = _source(tmp_path, mode, cache)
    try:
        (source.root / "f.txt").write_bytes(b"x" * 100)
        result = scan(source.root, source.manifest, source.filter, cache=source.content)
        (change,) = result.out
        assert change.entry is not None
        taken = [source.content.take("f.txt", change.entry.hash) for _ in range(3)]
        assert sum(t is not None for t in taken) == readers
    finally:
        source.close()


def test_a_closed_mapping_gives_its_kept_content_back(tmp_path: Path) -> None:
    cache = ContentCache()
    source = _source(tmp_path, "realtime", cache)
    (source.root / "f.txt").write_bytes(b"x" * 100)
    scan(source.root, source.manifest, source.filter, cache=source.content)
    assert cache.size_bytes > 0
    source.close()
    assert cache.size_bytes == 0
