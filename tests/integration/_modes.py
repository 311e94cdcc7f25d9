"""Helpers of the transmission-mode tests: set a mapping's mode, wait for its source to run
in it, read a source's journal, and the `relaysync send` command line."""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import msgspec

from relaysync.testing.cluster import wait_until
from relaysync.watch.changes import JournalRecord
from tests.integration.conftest import Fleet


def stays_absent(path: Path, seconds: float) -> bool:
    """True if `path` does not appear during `seconds` (a bounded negative check)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return False
        time.sleep(0.05)
    return True


def set_mode(fleet: Fleet, mapping_id: int, **body: object) -> dict:
    r = fleet.cluster.api.put(f"/api/mappings/{mapping_id}/mode", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def hold(fleet: Fleet, mapping: dict) -> Path:
    """Hold the mapping; its source's journal directory."""
    set_mode(fleet, mapping["id"], mode="manual")
    wait_mode(fleet, mapping, "manual")
    return fleet.cluster.agents["src"].data_dir / "sources" / str(mapping["id"]) / "journal"


def wait_mode(fleet: Fleet, mapping: dict, mode: str) -> None:
    """Until the source agent runs this mapping's source in `mode` (its log says so by the
    folder: on a fleet shared by a module, another mapping's line is no sign)."""
    line = f"source {mapping['source_path']} ready ({mode} mode)"
    wait_until(
        lambda: line in (fleet.cluster.base / "agent-src.log").read_text(),
        timeout_s=30,
        what=f"the source running in {mode} mode",
    )


def send_argv(fleet: Fleet, mapping_id: int, *options: str) -> list[str]:
    """`python -m relaysync send MAPPING` against the fleet's master, with the admin token."""
    token = (fleet.cluster.master_dir / "admin-token").read_text().strip()
    return [sys.executable, "-m", "relaysync", "send", str(mapping_id)] + [
        "--master",
        fleet.cluster.api_url,
        "--token",
        token,
        *options,
    ]


def journaled_ops(journal: Path) -> list[tuple[str, str]]:
    """(op, path) of the records in a source's journal (read-only; a torn last frame is left out)."""
    out = []
    for seg in sorted(journal.glob("*.seg")):
        data, offset = seg.read_bytes(), 0
        while offset + 8 <= len(data):
            end = offset + 8 + struct.unpack_from(">I", data, offset)[0]
            if end > len(data):
                break
            record = msgspec.msgpack.decode(data[offset + 8 : end], type=JournalRecord)
            out.append((record.op, record.path))
            offset = end
    return out
