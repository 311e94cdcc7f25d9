"""A second master or agent started on a running one's data directory exits at once with what to
do, touching nothing there: before, it ran beside the first on the same store or journals and
took over its master.json and control-port (a master), or its control link (an agent)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync._util.ports import stable_free_port
from relaysync.testing.cluster import Cluster

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 60.0  # the refused process exits in about a second (its imports)
REFUSED_EXIT = 21  # DataDirInUse.exit_code


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A master and one agent, a1."""
    c = Cluster(tmp_path / "fleet")
    try:
        c.start_master()
        c.start_agent("a1")
        yield c
    finally:
        c.stop()


def _relaysync(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
    return subprocess.run(
        [sys.executable, "-m", "relaysync", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
    )


def _files(data: Path) -> dict[str, bytes]:
    return {name: (data / name).read_bytes() for name in ("master.json", "control-port", "lock")}


def test_a_second_master_on_the_same_data_dir_is_refused(cluster: Cluster) -> None:
    data = cluster.master_dir
    assert cluster.master is not None
    before = _files(data)
    second = _relaysync(
        "master",
        "--data",
        str(data),
        "--listen",
        f"127.0.0.1:{stable_free_port()}",
        "--control-listen",
        f"127.0.0.1:{stable_free_port()}",
    )
    assert second.returncode == REFUSED_EXIT, second.stderr
    assert second.stderr.splitlines()[-1] == (  # one line, whatever the terminal's width
        f"error: another relaysync master (pid {cluster.master.pid}) is using {data.resolve()}; "
        "stop it first, or give this master its own --data"
    )
    assert _files(data) == before  # its API and control port, as local tools and agents know them
    assert cluster.master.alive()
    assert cluster.api.get("/api/servers/a1").json()["state"] == "up"
    status = _relaysync("status", "--data", str(data))  # read-only commands still work
    assert status.returncode == 0, status.stderr


def test_a_killed_master_restarts_on_its_data_dir(cluster: Cluster) -> None:
    """kill -9 leaves the lock file: the kernel released its lock, the restart takes it."""
    assert cluster.master is not None
    cluster.master.kill()
    cluster.start_master()
    assert (cluster.master_dir / "lock").read_text() == f"{cluster.master.pid} master\n"
    cluster.wait_agent_up("a1")


def test_a_second_agent_on_the_same_data_dir_is_refused(cluster: Cluster) -> None:
    agent = cluster.agents["a1"]
    second = _relaysync(
        "agent",
        "--master",
        cluster.api_url,
        "--name",
        "a1",
        "--data",
        str(agent.data_dir),
        "--listen",
        "127.0.0.1:0",
    )
    assert second.returncode == REFUSED_EXIT, second.stderr
    assert second.stderr.splitlines()[-1] == (
        f"error: another relaysync agent (pid {agent.process.pid}) is using "
        f"{agent.data_dir.resolve()}; stop it first, or give this agent its own --data"
    )
    assert agent.process.alive()
    server = cluster.api.get("/api/servers/a1").json()
    assert server["state"] == "up" and server["node_id"] == agent.node_id


def test_an_agent_on_a_masters_data_dir_is_refused(cluster: Cluster) -> None:
    assert cluster.master is not None
    second = _relaysync(
        "agent", "--master", cluster.api_url, "--name", "x", "--data", str(cluster.master_dir)
    )
    assert second.returncode == REFUSED_EXIT, second.stderr
    assert f"another relaysync master (pid {cluster.master.pid})" in second.stderr
    assert not (cluster.master_dir / "identity").exists()
