"""A real master and real `relaysync agent` processes: the first join checks the master's CA.

The master's data_dir/join-token holds a join string (token.ca-fingerprint), and an agent given
it joins; one given a join string for another CA, or a bare token without --ca-fingerprint or
--insecure-first-join, stops with a clear error and no identity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.auth.ca import CertificateAuthority, fingerprint
from relaysync.auth.tokens import join_string, split_join_string
from relaysync.testing.cluster import Cluster, wait_until

EXIT_TIMEOUT_S = 60.0  # an agent that refuses to join exits at once; generous under load


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("first-join"))
    c.start_master()
    try:
        yield c
    finally:
        c.stop()


def _refused(cluster: Cluster, name: str, token: str, *extra: str) -> tuple[int, str]:
    """Start agent `name` with `token`; its exit status and log once it has stopped."""
    agent = cluster.start_agent(name, token=token, extra_args=extra, wait=False)
    wait_until(lambda: not agent.process.alive(), timeout_s=EXIT_TIMEOUT_S, what=f"{name} exits")
    assert agent.process.popen is not None
    return agent.process.popen.returncode, agent.process.log_path.read_text()


def test_the_default_join_token_file_holds_a_join_string_and_agents_join_with_it(
    cluster: Cluster,
) -> None:
    _token, ca_fingerprint = split_join_string(cluster.join_token)
    assert ca_fingerprint == fingerprint((cluster.master_dir / "ca" / "ca.pem").read_bytes())
    cluster.start_agent("web-1")  # waits until the master lists it up


def test_an_agent_told_another_ca_refuses_to_join(cluster: Cluster) -> None:
    token, _ = split_join_string(cluster.join_token)
    status, log = _refused(cluster, "web-2", join_string(token, "ab" * 32))
    assert status != 0 and "another fleet" in log
    assert not (cluster.base / "agents" / "web-2" / "identity").exists()
    assert cluster.api.get("/api/servers/web-2").status_code == 404  # the name stays free


def test_a_bare_token_needs_the_ca_fingerprint_or_insecure_first_join(cluster: Cluster) -> None:
    token, ca_fingerprint = split_join_string(cluster.join_token)
    assert ca_fingerprint is not None
    status, log = _refused(cluster, "web-3", token)
    assert status == 2 and "names no CA" in log and "--insecure-first-join" in log
    assert not (cluster.base / "agents" / "web-3" / "identity").exists()
    openssl_style = ":".join(f"{b:02X}" for b in bytes.fromhex(ca_fingerprint))
    cluster.start_agent("web-4", token=token, extra_args=["--ca-fingerprint", openssl_style])
    cluster.start_agent("web-5", token=token, extra_args=["--insecure-first-join"])
    log = (cluster.base / "agent-web-5.log").read_text()
    assert "without checking the master's CA" in log


def test_an_older_join_token_file_gets_its_ca_fingerprint_at_the_next_start(
    cluster: Cluster,
) -> None:
    """A data dir from an older release holds the token alone: same token, fingerprint added."""
    full = cluster.join_token
    token, _ = split_join_string(full)
    (cluster.master_dir / "join-token").write_text(token + "\n")
    assert cluster.master is not None
    cluster.master.stop()
    cluster.start_master()
    assert cluster.join_token == full
    assert (cluster.master_dir / "join-token").stat().st_mode & 0o777 == 0o600


def _restarted(cluster: Cluster, name: str) -> tuple[int, str]:
    """Start stopped agent `name` again; its exit status and what it logged this time."""
    before = cluster.agents[name].process.log_path.stat().st_size
    agent = cluster.start_agent(name, wait=False)
    wait_until(lambda: not agent.process.alive(), timeout_s=EXIT_TIMEOUT_S, what=f"{name} exits")
    assert agent.process.popen is not None
    log = agent.process.log_path.read_bytes()[before:].decode(errors="replace")
    return agent.process.popen.returncode, " ".join(log.split())  # the console wraps lines


def test_a_saved_identity_trusting_a_second_ca_or_without_master_json_stops_the_agent(
    cluster: Cluster, tmp_path: Path
) -> None:
    """An older release saved ca.pem as the join answer had it, and wrote master.json last: an
    answer altered on the way left a second CA (trusted for every TLS link), a malformed one an
    identity without master.json. The agent refuses both at start, saying what to do."""
    agent = cluster.start_agent("web-6")
    agent.process.stop()
    identity = agent.data_dir / "identity"
    ca_pem = (identity / "ca.pem").read_bytes()
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    (identity / "ca.pem").write_bytes(ca_pem + other.ca_pem)
    status, log = _restarted(cluster, "web-6")
    assert status == 12 and "ca.pem must hold exactly one certificate" in log, log
    assert f"delete {identity}" in log and "Traceback" not in log

    (identity / "ca.pem").write_bytes(ca_pem)
    (identity / "master.json").unlink()
    status, log = _restarted(cluster, "web-6")
    assert status == 12 and "master.json is missing" in log, log
    assert f"delete {identity}" in log and "Traceback" not in log
