"""agent/enrollment.py: what an agent keeps of its master, old master.json files included."""

from __future__ import annotations

import json
from pathlib import Path

from relaysync.agent.enrollment import MasterPin, pin_master, read_master_file
from relaysync.transfer import tls


def test_a_master_json_without_the_masters_node_id_is_pinned_later(tmp_path: Path) -> None:
    identity = tls.Identity.in_directory(tmp_path)
    old = {
        "control_address": "10.0.0.1:4096",
        "master_url": "http://10.0.0.1:8080",
    }  # before pinning
    (tmp_path / "master.json").write_text(json.dumps(old))
    assert read_master_file(identity) == MasterPin(control_address="10.0.0.1:4096", node_id=None)
    pin_master(identity, "ab" * 32)
    assert read_master_file(identity) == MasterPin(
        control_address="10.0.0.1:4096", node_id="ab" * 32
    )
    assert json.loads((tmp_path / "master.json").read_text()) == {
        **old,
        "master_node_id": "ab" * 32,
    }
    assert [p.name for p in tmp_path.iterdir()] == ["master.json"]  # no temp file left
