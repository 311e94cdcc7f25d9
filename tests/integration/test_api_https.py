"""The master's REST API over HTTPS, with real master and agent processes: api_tls = "fleet" (a
certificate from the fleet's CA), agents joining over https (the CA checked by its fingerprint
before the token is sent), the CLI checking the master, "files", and plain HTTP refused where
other hosts could reach it."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from relaysync.auth.tokens import join_string, split_join_string
from relaysync.testing.cluster import Cluster, Process, wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S

pytestmark = pytest.mark.integration

EXIT_TIMEOUT_S = 60.0  # a refused start exits at once; generous under load
CLI_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("api-https"))
    c.start_master(extra_args=["--api-tls", "fleet"])
    try:
        yield c
    finally:
        c.stop()


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")} | extra


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaysync", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env or _env(),
    )


def test_the_api_answers_https_with_a_fleet_certificate_and_not_plain_http(
    cluster: Cluster,
) -> None:
    assert cluster.api_url.startswith("https://127.0.0.1:")
    assert cluster.api.get("/api/health").status_code == 200  # checked against the fleet CA
    port = int(cluster.api_url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(cluster.master_dir / "ca" / "ca.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(httpx.ConnectError):  # the system's CAs do not know the fleet's
        httpx.get(f"{cluster.api_url}/api/health", timeout=10)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10)
    assert cluster.master is not None
    log = cluster.master.log_path.read_text()
    assert f"API on {cluster.api_url} (fleet certificate, expires " in log
    state = json.loads((cluster.master_dir / "master.json").read_text())
    assert state["api_tls"] == "fleet" and state["api_url"] == cluster.api_url


def test_an_agent_joins_over_https_with_the_join_string_and_replicates(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_agent("src")
    cluster.start_agent("t1")
    src, dst = tmp_path / "source", tmp_path / "target"
    src.mkdir()
    cluster.create_mapping("https-m", "src", src, [("t1", dst)])
    wait_until(dst.is_dir, timeout_s=CONVERGE_TIMEOUT_S, what="target opened")
    (src / "hello.txt").write_bytes(b"over https")
    wait_until(
        lambda: (dst / "hello.txt").read_bytes() == b"over https",
        timeout_s=CONVERGE_TIMEOUT_S,
        what="file replicated",
    )


def test_a_join_string_for_another_ca_is_refused_before_the_token_is_sent(
    cluster: Cluster,
) -> None:
    assert cluster.master is not None
    master_log = cluster.master.log_path
    token, _ = split_join_string(cluster.join_token)
    agent = cluster.start_agent("web-x", token=join_string(token, "ab" * 32), wait=False)
    wait_until(lambda: not agent.process.alive(), timeout_s=EXIT_TIMEOUT_S, what="agent exits")
    assert agent.process.popen is not None and agent.process.popen.returncode == 12
    log = " ".join(agent.process.log_path.read_text().split())
    assert "is not the one this agent was told to join" in log and "Traceback" not in log
    assert not (agent.data_dir / "identity").exists()
    assert "join refused" not in master_log.read_text()  # no /api/join reached the master
    assert cluster.api.get("/api/servers/web-x").status_code == 404
    # the check above can see a join: one that does reach the master is logged
    r = cluster.api.post("/api/join", json={"token": "nope", "name": "web-y", "csr_pem": "x"})
    assert r.status_code == 403
    wait_until(
        lambda: "join refused" in master_log.read_text(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the refused join logged",
    )


def test_the_cli_checks_the_master_against_the_fleet_ca(cluster: Cluster) -> None:
    token = (cluster.master_dir / "admin-token").read_text().strip()
    ca = str(cluster.master_dir / "ca" / "ca.pem")
    target = ["--master", cluster.api_url, "--token", token]
    assert _cli("status", *target, "--ca-file", ca).returncode == 0
    assert _cli("status", *target, env=_env(RELAYSYNC_CA_FILE=ca)).returncode == 0
    assert _cli("status", "--data", str(cluster.master_dir)).returncode == 0  # beside the master
    refused = _cli("status", *target)
    message = " ".join(refused.stderr.split())
    assert refused.returncode == 12, refused.stderr
    assert "not trusted here" in message and "--ca-file" in message
    assert "Traceback" not in refused.stderr


def test_the_api_serves_an_operators_own_certificate_with_files(tmp_path: Path) -> None:
    """And agents join it with the join string: the operator's certificate checked with
    --api-ca-file, the fleet's CA by the join string's fingerprint, before the token is sent."""
    authority = trustme.CA()
    leaf = authority.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "api-cert.pem", tmp_path / "api-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    operator_ca = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(operator_ca))
    c = Cluster(tmp_path / "fleet", api_ca_file=operator_ca)
    try:
        c.start_master(
            extra_args=[
                "--api-tls",
                "files",
                "--api-cert-file",
                str(cert),
                "--api-key-file",
                str(key),
            ]
        )
        r = httpx.get(
            f"{c.api_url}/api/health",
            verify=ssl.create_default_context(cafile=operator_ca),
            timeout=10,
        )
        assert c.api_url.startswith("https://") and r.status_code == 200
        assert not (c.master_dir / "api").exists()  # no fleet certificate made
        refused = c.start_agent("f0", wait=False)  # no --api-ca-file: the fleet CA alone
        wait_until(lambda: not refused.process.alive(), timeout_s=EXIT_TIMEOUT_S, what="exit")
        log = " ".join(refused.process.log_path.read_text().split())
        assert "not trusted here" in log and "--api-ca-file" in log and "Traceback" not in log
        assert not (refused.data_dir / "identity").exists()
        c.start_agent("f1", extra_args=["--api-ca-file", str(operator_ca)])  # joins, comes up
    finally:
        c.stop()


def test_plain_http_on_every_interface_is_refused_unless_insecure_http_is_set(
    tmp_path: Path,
) -> None:
    data = tmp_path / "m"
    args = ["master", "--data", str(data), "--listen", "0.0.0.0:0", "--api-tls", "off"]
    refused = _cli(*args)
    assert refused.returncode == 20, refused.stderr
    assert "in plain HTTP" in " ".join(refused.stderr.split()) and not data.exists()

    master = Process("master", args, tmp_path / "master.log")
    master.start(_env(RELAYSYNC_API_INSECURE_HTTP="true"))
    try:
        state = wait_until(
            lambda: json.loads((data / "master.json").read_text()),
            timeout_s=EXIT_TIMEOUT_S,
            what="master start",
        )
        assert state["api_url"].startswith("http://127.0.0.1:") and state["api_tls"] == "off"
        assert "api_insecure_http" in master.log_path.read_text()
    finally:
        master.stop()


def test_the_benchs_master_off_loopback_is_reached_over_https(tmp_path: Path) -> None:
    """bench/_common.start_master_on (a netns address in the benches: https by default) must
    give its client the fleet's CA; api_tls = fleet on 127.0.0.1 stands in for that address."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "_common.py"
    spec = importlib.util.spec_from_file_location("bench_common_under_test", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    c = Cluster(tmp_path / "bench", extra_env={"RELAYSYNC_API_TLS": "fleet"})
    try:
        bench.start_master_on(c, "127.0.0.1")
        assert c.api_url.startswith("https://")
        assert c.api.get("/api/health").status_code == 200
    finally:
        c.stop()
