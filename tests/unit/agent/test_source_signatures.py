"""The source keeps its signature store tidy: old deltas are pruned on a timer, and the
signatures of deleted or renamed files follow their journal records."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
import xxhash

from relaysync.agent import source as source_module
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, TargetSpec
from relaysync.watch.changes import JournalRecord
from relaysync.watch.manifest import Entry


@pytest.fixture
def mapping(tmp_path: Path) -> SourceMapping:
    (tmp_path / "src").mkdir()
    spec = MappingSpec(
        mapping_id=1,
        name="m",
        source_node="s",
        source_path=str(tmp_path / "src"),
        targets=(TargetSpec(node_id="t1", path="/t1"),),
        durability="fast",
    )
    return SourceMapping(spec, tmp_path / "state")


def test_old_deltas_are_pruned_on_a_timer_not_only_when_a_delta_starts(
    mapping: SourceMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert mapping.signatures is not None
    old = mapping.signatures.dir / "delta" / "0123.abcd.1-2-3-4.0.delta"
    old.write_bytes(b"x" * 1000)
    past = time.time() - 3600
    os.utime(old, (past, past))
    monkeypatch.setattr(source_module, "PRUNE_EVERY_S", 0.05)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping._prune_deltas)
            with anyio.fail_after(10):
                while old.exists():
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert not old.exists()


def _signed_tree(mapping: SourceMapping, paths: list[str]) -> dict[str, bytes]:
    """Files at `paths` (256 KiB each) known to the manifest and signed, as after they were sent."""
    assert mapping.signatures is not None
    hashes = {}
    for path in paths:
        full = mapping.root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(256 * 1024)
        full.write_bytes(data)
        hashes[path] = xxhash.xxh3_128(data).digest()
        mapping.signatures.remember(mapping.root, path, hashes[path])
    dirs = {p.rpartition("/")[0] for p in paths} - {""}
    mapping.manifest.put_many(
        [Entry(path=d, kind="d") for d in sorted(dirs)]
        + [Entry(path=p, kind="f", size=256 * 1024, hash=h) for p, h in hashes.items()]
    )
    return hashes


def test_deletes_and_renames_take_their_signatures_along(mapping: SourceMapping) -> None:
    sigs = mapping.signatures
    assert sigs is not None
    hashes = _signed_tree(
        mapping, ["gone.bin", "d/x.bin", "d/y.bin", "a.bin", "e/z.bin", "kept.bin"]
    )
    assert len(list((sigs.dir / "sig").iterdir())) == 6
    records = [
        JournalRecord(seq=1, op="delete", path="gone.bin"),
        JournalRecord(seq=2, op="delete", path="d"),  # a directory: every file below it
        JournalRecord(
            seq=3,
            op="rename",
            path="a.bin",
            new_path="b.bin",
            entry=Entry(path="b.bin", kind="f", hash=hashes["a.bin"]),
        ),
        JournalRecord(seq=4, op="rename", path="e", new_path="f", entry=Entry(path="f", kind="d")),
    ]
    mapping._apply(records)
    assert sorted(p.name for p in (sigs.dir / "sig").iterdir()) == sorted(
        f"{sigs._key(p)}.{hashes[old].hex()}.sig"
        for p, old in [("b.bin", "a.bin"), ("f/z.bin", "e/z.bin"), ("kept.bin", "kept.bin")]
    )
    assert mapping.manifest.get("b.bin") is not None and mapping.manifest.get("d/x.bin") is None


def test_a_directory_renamed_then_deleted_or_renamed_again_in_one_batch_takes_its_signatures_along(
    mapping: SourceMapping,
) -> None:
    sigs = mapping.signatures
    assert sigs is not None
    hashes = _signed_tree(mapping, ["d/x.bin", "d/y.bin", "e/z.bin"])
    mapping._apply(
        [  # mv d tmp && rm -rf tmp; mv e f && mv f g
            JournalRecord(
                seq=1, op="rename", path="d", new_path="tmp", entry=Entry(path="tmp", kind="d")
            ),
            JournalRecord(seq=2, op="delete", path="tmp"),
            JournalRecord(
                seq=3, op="rename", path="e", new_path="f", entry=Entry(path="f", kind="d")
            ),
            JournalRecord(
                seq=4, op="rename", path="f", new_path="g", entry=Entry(path="g", kind="d")
            ),
        ]
    )
    assert sorted(p.name for p in (sigs.dir / "sig").iterdir()) == [
        f"{sigs._key('g/z.bin')}.{hashes['e/z.bin'].hex()}.sig"
    ]
    assert mapping.manifest.get("g/z.bin") is not None and mapping.manifest.get("tmp/x.bin") is None
