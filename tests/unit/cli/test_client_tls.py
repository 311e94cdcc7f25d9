"""The operator commands' client and an https master: what its certificate is checked with."""

from __future__ import annotations

import json
from pathlib import Path

from relaysync.cli._client import resolve_target


def _master_dir(base: Path, url: str, api_tls: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    state = {"api_url": url, "control_address": "x:1", "api_tls": api_tls}
    (base / "master.json").write_text(json.dumps(state))
    (base / "admin-token").write_text("admin-secret\n")
    return base


def test_an_https_master_beside_us_is_checked_with_its_fleet_ca(tmp_path: Path) -> None:
    data = _master_dir(tmp_path / "m", "https://127.0.0.1:8470", "fleet")
    assert resolve_target(data=data, environ={}).ca_file == str(data / "ca" / "ca.pem")


def test_ca_file_option_then_environment_then_the_local_fleet_ca(tmp_path: Path) -> None:
    data = _master_dir(tmp_path / "m", "https://127.0.0.1:8470", "fleet")
    env = {"RELAYSYNC_CA_FILE": "/env/ca.pem"}
    assert resolve_target(data=data, environ=env).ca_file == "/env/ca.pem"
    got = resolve_target(data=data, ca_file=Path("/opt/ca.pem"), environ=env)
    assert got.ca_file == "/opt/ca.pem"


def test_no_fleet_ca_for_plain_http_or_an_operators_own_certificate(tmp_path: Path) -> None:
    plain = _master_dir(tmp_path / "p", "http://127.0.0.1:8470", "off")
    assert resolve_target(data=plain, environ={"RELAYSYNC_CA_FILE": "/x"}).ca_file == ""
    files = _master_dir(tmp_path / "f", "https://master.example:8470", "files")
    assert resolve_target(data=files, environ={}).ca_file == ""  # the system's CAs


def test_the_scheme_is_read_in_any_case(tmp_path: Path) -> None:
    """HTTPS:// is https: the --ca-file given must not be dropped."""
    got = resolve_target(master="HTTPS://127.0.0.1:1", ca_file=Path("/opt/ca.pem"), environ={})
    assert got.ca_file == "/opt/ca.pem"
