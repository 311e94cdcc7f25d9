"""Synchronization and backup: previous versions kept on a chosen target, and restored from the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from relaysync.testing.cluster import wait_until
from relaysync.transfer.versions import versions_dir_for
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration


def test_versions_kept_on_chosen_target_and_restored(own_fleet: Fleet) -> None:
    mapping, src, (d1, d2) = own_fleet.new_mapping(targets=("t1", "t2"))
    r = own_fleet.cluster.api.put(
        f"/api/mappings/{mapping['id']}/versions", json={"keep": 2, "targets": ["t1"]}
    )
    assert r.status_code == 200, r.text
    # t1 keeps versions once the setting has reached it: a probe is rewritten until its previous
    # version is kept ("running assignment" was in t1's log already, from the mapping's creation).
    probes = itertools.count()

    def probe_version_kept() -> bool:
        (src / "probe").write_text(str(next(probes)))
        own_fleet.wait_converged(src, [d1, d2])
        kept = versions_dir_for(d1)
        return kept.is_dir() and any(p.name.startswith("probe@") for p in kept.iterdir())

    wait_until(
        probe_version_kept, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.1, what="t1 keeping versions"
    )
    for v in range(4):
        (src / "page.html").write_text(f"version {v}")
        own_fleet.wait_converged(src, [d1, d2])
    (src / "page.html").unlink()
    own_fleet.wait_converged(src, [d1, d2])
    kept = sorted(p.name for p in versions_dir_for(d1).iterdir() if p.name.startswith("page.html@"))
    assert len(kept) == 2  # the retention rule: the newest two
    assert not versions_dir_for(d2).exists()  # only the chosen target keeps versions
    assert not (d1 / "page.html").exists()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaysync",
            "restore",
            "page.html",
            "--mapping",
            str(mapping["id"]),
            "--data",
            str(own_fleet.cluster.agents["t1"].data_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["restored"]
    assert (d1 / "page.html").read_text() == "version 3"  # the version the delete replaced
