"""A source mapping and a target folder over a plain (HMAC) link, for tests of one link."""

from __future__ import annotations

from pathlib import Path

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, TargetSpec
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest

SECRET = b"s" * 32
SRC, TGT = "a" * 64, "b" * 64


def source_mapping(tmp: Path) -> SourceMapping:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    spec = MappingSpec(
        mapping_id=1,
        name="m",
        source_node=SRC,
        source_path=str(src),
        targets=(TargetSpec(node_id=TGT, path="/t"),),
        durability="fast",
    )
    return SourceMapping(spec, tmp / "state")


def target_folder(tmp: Path) -> TargetFolder:
    root = tmp / "tgt"
    root.mkdir(exist_ok=True)
    return TargetFolder(
        mapping_id=1,
        source_node=SRC,
        root=root,
        manifest=Manifest(tmp / "tgt.db"),
        durable=False,
        link_secret=SECRET,
    )
