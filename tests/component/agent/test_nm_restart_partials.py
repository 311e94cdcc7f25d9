"""An in-process target agent started again on a saved assignment whose N:M job has two members
receiving into one folder: each keeps the partial it was receiving (agent/_target_role.py
`_open_target` cleans the folder's stale temp files once, keeping every member's partials), and
what a mapping no longer assigned there left is removed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import msgspec
import pytest
import xxhash
from tests._fleet import Fleet

from relaysync.agent.enrollment import MASTER_FILE
from relaysync.agent.service import AgentService
from relaysync.config.schema import AgentConfig
from relaysync.constants import CHUNK_BYTES, TEMP_PREFIX
from relaysync.protocol.messages import Assignment, FileChunk, FileStart, MappingSpec, TargetSpec
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import RESUME_MIN_BYTES, TargetFolder
from relaysync.watch.manifest import Manifest

TIMEOUT_S = 20
BIG = RESUME_MIN_BYTES + CHUNK_BYTES  # gets a named, resumable partial
HELD = 5 * CHUNK_BYTES  # what each member had received when the agent stopped


def _agent(fleet: Fleet) -> AgentService:
    """web-1, joined through the real /api/join; its master (port 1) never answers, so the
    saved assignment is the one it runs."""
    joined = fleet.join("web-1")
    data = fleet.tmp / "web-1"
    shutil.copytree(joined.key_path.parent, data / "identity")
    (data / "identity" / MASTER_FILE).write_text(
        msgspec.json.encode(
            {"control_address": "127.0.0.1:1", "master_node_id": fleet.master.node_id}
        ).decode()
    )
    return AgentService(
        AgentConfig(master_url="http://127.0.0.1:1", name="web-1", data_dir=str(data))
    )


def _member(mapping_id: int, node_id: str, root: Path) -> MappingSpec:
    return MappingSpec(
        mapping_id=mapping_id,
        name=f"m{mapping_id}",
        source_node=f"S{mapping_id}",
        source_path="/src",
        targets=(TargetSpec(node_id=node_id, path=str(root)),),
        conflict="newest-mtime",
        job_id=7,
    )


def _receive_part_of(agent: AgentService, mapping_id: int, root: Path, path: str) -> str:
    """Mapping `mapping_id` was receiving `path` when the agent stopped: it keeps HELD bytes of
    it in its partial, listed in its manifest where the agent keeps it. Returns its file name."""
    state = agent.data_dir / "targets" / str(mapping_id)
    state.mkdir(parents=True)
    folder = TargetFolder(
        mapping_id=mapping_id,
        source_node=f"S{mapping_id}",
        root=root,
        manifest=Manifest(state / "manifest.db"),
        durable=False,
    )
    content = os.urandom(BIG)
    start = FileStart(
        seq=1,
        path=path,
        size=BIG,
        mode=0o644,
        mtime_ns=1,
        expected_hash=xxhash.xxh3_128(content).digest(),
    )
    chunks = [
        FileChunk(seq=1, offset=o, data=content[o : o + CHUNK_BYTES])
        for o in range(0, HELD, CHUNK_BYTES)
    ]
    session = ReceiverSession(folder, "j", lambda *_: None)
    session.apply_batch([start, *chunks])
    session.close()  # the link went mid-file: the partial is kept to be resumed
    assert [p.size for p in folder.list_partials()] == [HELD]
    folder.manifest.close()
    return folder.partial_relpath(path, start.expected_hash)


def _parts(root: Path) -> set[str]:
    return {n for n in os.listdir(root) if n.startswith(TEMP_PREFIX)}


def test_a_restart_keeps_the_partials_of_every_member_on_a_shared_root(fleet: Fleet) -> None:
    agent = _agent(fleet)
    root = fleet.tmp / "shared"
    root.mkdir()
    one, two, three = (
        _receive_part_of(agent, mapping_id, root, path)
        for mapping_id, path in ((1, "one.bin"), (2, "two.bin"), (3, "three.bin"))
    )
    crashed = f"{TEMP_PREFIX}crashed.bin.1a2b3c0.tmp"  # a batch's temp file
    (root / crashed).write_bytes(b"x")
    assert _parts(root) == {one, two, three, crashed}
    # Mapping 3 left the job while the agent was down: its partial is nobody's now.
    node_id = fleet.joined["web-1"]["node_id"]
    members = (_member(1, node_id, root), _member(2, node_id, root))
    saved = Assignment(epoch=7, mappings=members, peers=())
    agent._assignment_path().write_bytes(msgspec.msgpack.encode(saved))

    async def run() -> tuple[dict[int, list[int]], set[str]]:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.serve)
            with anyio.fail_after(TIMEOUT_S):
                while agent.epoch != 7:
                    await anyio.sleep(0.02)
            kept = {m: [p.size for p in agent.targets[m].list_partials()] for m in (1, 2)}
            tg.cancel_scope.cancel()
        return kept, _parts(root)

    kept, left = anyio.run(run)
    assert kept == {1: [HELD], 2: [HELD]}  # was {1: [HELD], 2: []}: member 1 removed 2's
    assert left == {one, two}  # mapping 3's partial and the batch's temp file went


def test_a_member_whose_manifest_cannot_be_read_keeps_every_temp_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Which partials under the root are the other member's is unknown: none is removed (the
    member is refused when it is opened, and tried again at the next assignment)."""
    agent = AgentService(
        AgentConfig(master_url="http://127.0.0.1:1", name="web-1", data_dir=str(tmp_path))
    )
    root = tmp_path / "shared"
    root.mkdir()
    two = _receive_part_of(agent, 2, root, "two.bin")
    (agent.data_dir / "targets" / "2" / "manifest.db").write_bytes(b"not a database" * 512)
    crashed = f"{TEMP_PREFIX}crashed.bin.1a2b3c0.tmp"
    (root / crashed).write_bytes(b"x")
    spec = _member(1, "T", root)
    agent.node_id = "T"
    folder = agent._open_target(spec, root, (), [2])
    folder.manifest.close()
    assert _parts(root) == {two, crashed}
    assert "cannot read which partials mapping 2 keeps there" in caplog.text


def test_new_filters_reopen_a_folder_and_keep_its_partials(fleet: Fleet) -> None:
    """New include/exclude patterns reopen a target folder (what it holds that they no longer
    exclude is scanned in); reopened, it threw away its resumable partials, as a removed
    mapping's: every large transfer under way began again from byte 0."""
    agent = _agent(fleet)
    root = fleet.tmp / "filtered"
    root.mkdir()
    part = _receive_part_of(agent, 1, root, "big.bin")
    node_id = fleet.joined["web-1"]["node_id"]
    spec = msgspec.structs.replace(_member(1, node_id, root), conflict="", job_id=0)
    saved = Assignment(epoch=7, mappings=(spec,), peers=())
    agent._assignment_path().write_bytes(msgspec.msgpack.encode(saved))

    async def run() -> tuple[bool, list[int]]:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.serve)
            with anyio.fail_after(TIMEOUT_S):
                while agent.epoch != 7:
                    await anyio.sleep(0.02)
            before = agent.targets[1]
            filtered = msgspec.structs.replace(spec, exclude=(r"\.tmp$",))
            await agent.apply_assignment(Assignment(epoch=8, mappings=(filtered,), peers=()))
            reopened = agent.targets[1] is not before
            kept = [p.size for p in agent.targets[1].list_partials()]
            tg.cancel_scope.cancel()
        return reopened, kept

    reopened, kept = anyio.run(run)
    assert reopened and kept == [HELD]  # was []: dropped at the reopen
    assert part in _parts(root)
