"""A fleet upgraded one server at a time: an agent of an older release (no `small_file` in its
Hello, set with RELAYSYNC_CAPABILITIES="") gets small files as FileStart ... FileEnd, directly from
the source and through a relay that was sent them as SmallFile. Its peer server refuses a
SmallFile outright, as an older release would fail to decode one, so a sender that ignored its
Hello would never converge."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import Cluster, wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("mixed")
    cluster = Cluster(base / "fleet")
    cluster.start_master()
    cluster.start_agent("src", wait=False)
    cluster.start_agent("new", wait=False)
    cluster.start_agent("old", wait=False, env={"RELAYSYNC_CAPABILITIES": ""})
    for name in ("src", "new", "old"):
        cluster.wait_agent_up(name)
    try:
        yield Fleet(cluster, base)
    finally:
        cluster.stop()


def _write(src: Path, tag: str) -> None:
    for i in range(30):
        (src / "d" / f"{tag}{i}.txt").write_bytes(f"{tag} {i}\n".encode() * (i * 40 + 1))
    (src / f"{tag}-big.bin").write_bytes(os.urandom(200 * 1024))  # streamed either way
    (src / f"{tag}-empty").write_bytes(b"")


def test_an_older_release_gets_small_files_streamed_from_the_source(mixed: Fleet) -> None:
    _, src, dsts = mixed.new_mapping(targets=("new", "old"))
    (src / "d").mkdir()
    _write(src, "a")
    mixed.wait_converged(src, dsts)
    (src / "d" / "a3.txt").write_bytes(b"changed\n")  # an update of a file the old agent holds
    mixed.wait_converged(src, dsts)


def test_a_relay_converts_what_it_was_sent_as_small_files_for_an_older_child(mixed: Fleet) -> None:
    mapping, src, dsts = mixed.new_mapping(targets=("new", "old"))
    r = mixed.cluster.api.put(
        f"/api/mappings/{mapping['id']}/routing",
        json={"mode": "manual", "hops": [["src", "new"], ["new", "old"]]},
    )
    assert r.status_code == 200, r.text
    (src / "d").mkdir()

    def via_relay() -> bool:
        rows = mixed.cluster.api.get(
            "/api/advances", params={"mapping": str(mapping["id"]), "target": "old", "limit": 1}
        ).json()
        return bool(rows) and rows[0]["route"] == "src>new>old"

    # The route reaches the agents a moment after it is set: write until a change takes it.
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    for i in range(100):
        (src / "d" / f"probe{i}.txt").write_text("probe")
        mixed.wait_converged(src, dsts)
        if via_relay() or time.monotonic() > deadline:
            break
    wait_until(
        via_relay, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.1, what="old served through the relay"
    )
    _write(src, "b")
    mixed.wait_converged(src, dsts)
    assert via_relay()
