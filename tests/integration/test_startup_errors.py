"""Against a real master: an agent whose --listen or --metrics-listen port another process holds
stops with one line naming the option, and the master's refusals are printed with one prefix."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.errors import ConfigError
from relaysync.testing.cluster import Cluster
from tests.unit.cli.test_startup_errors import cli as run_cli
from tests.unit.cli.test_startup_errors import error_line

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 90.0  # an agent joins the master, then fails to bind


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("startup"))
    c.start_master()
    try:
        c.start_agent("src")  # a server a mapping may name
        yield c
    finally:
        c.stop()


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 this test listens on, for the agent under test to find in use."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as the unit tests run it, from the fleet's folder, with an agent's longer bound."""
    return run_cli(*args, cwd=cluster.base, timeout_s=CLI_TIMEOUT_S)


@pytest.mark.parametrize("option", ["--listen", "--metrics-listen"])
def test_an_agent_port_in_use_is_one_line(
    cluster: Cluster, tmp_path: Path, held_port: int, option: str
) -> None:
    name = "b-" + option.strip("-")
    args = ["agent", "--master", cluster.api_url, "--token", cluster.join_token]
    args += ["--name", name, "--data", str(tmp_path / name), option, f"127.0.0.1:{held_port}"]
    result = cli(cluster, *args)
    assert result.returncode == ConfigError.exit_code  # CannotListen is one, result.stderr
    assert error_line(result) == (
        f"error: Cannot listen on 127.0.0.1:{held_port}: address already in use (another "
        f"relaysync, or another program? see ss -ltnp); choose another with {option}."
    )


def test_the_masters_refusals_have_one_prefix(cluster: Cluster) -> None:
    token = (cluster.master_dir / "admin-token").read_text().strip()
    common = ["--master", cluster.api_url, "--token", token]
    result = cli(cluster, "stats", "--since", "yesterday", *common)
    assert result.returncode == ConfigError.exit_code, result.stderr
    line = error_line(result)
    assert line.startswith("error: Configuration error: GET /api/stats: time 'yesterday'"), line
    assert line.count("Configuration error") == 1, line
    result = cli(
        cluster, "mapping", "add", "m", "--source", "src:/srv/../etc", "--target", "src:/y", *common
    )
    assert result.returncode == ConfigError.exit_code, result.stderr
    line = error_line(result)
    assert line.startswith("error: Configuration error: POST /api/mappings: "), line
    assert "must not contain '..'" in line, line
    assert line.count("Configuration error") == 1, line


def test_a_misspelt_variable_leaves_a_commands_output_whole(cluster: Cluster) -> None:
    """The warning about RELAYSYNC_LISTN goes to stderr once: `status --json | jq` still reads
    JSON alone on stdout."""
    token = (cluster.master_dir / "admin-token").read_text().strip()
    result = run_cli(
        *("status", "--json", "--master", cluster.api_url, "--token", token),
        cwd=cluster.base,
        env={"RELAYSYNC_LISTN": "127.0.0.1:1"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["servers_up"] >= 1
    assert result.stderr.splitlines() == [
        "warning: RELAYSYNC_LISTN is not a relaysync setting (did you mean RELAYSYNC_LISTEN?); "
        "ignored"
    ]
