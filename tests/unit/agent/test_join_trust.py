"""agent/_join_trust.py: a join token never goes over plain http to another host, and the words
of a join that fails over http."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trustme

import relaysync.agent._join_trust as join_trust
from relaysync.agent.enrollment import join
from relaysync.auth.ca import CertificateAuthority
from relaysync.auth.tokens import join_string
from relaysync.config.schema import AgentConfig
from relaysync.errors import ApiCertificateRefused, ConfigError, MasterNotTrusted
from relaysync.transfer import tls
from tests.unit.auth.test_api_trust import tls_server


def _cfg(url: str, **extra: object) -> AgentConfig:
    extra.setdefault("data_dir", "/unused")
    return AgentConfig(master_url=url, name="web-1", **extra)  # type: ignore[arg-type]


@pytest.fixture
def another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 judged as another host's address: a test cannot listen on one."""
    monkeypatch.setattr(join_trust, "is_loopback", lambda host: False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.usefixtures("another_host")
def test_plain_http_to_another_host_is_refused_with_https_named() -> None:
    port = _free_port()  # nothing listens: the probe finds no TLS
    with pytest.raises(ConfigError) as refused:
        join_trust.join_verify(_cfg(f"http://127.0.0.1:{port}"), "ab" * 32)
    message = str(refused.value)
    assert f"use --master https://127.0.0.1:{port}" in message and "in clear" in message


@pytest.mark.usefixtures("another_host")
def test_plain_http_to_a_master_that_serves_https_says_so(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "chain.pem"))
    with tls_server(tmp_path / "chain.pem", tmp_path / "chain.pem") as (port, received):
        with pytest.raises(ConfigError) as refused:
            join_trust.join_verify(_cfg(f"http://127.0.0.1:{port}"), "ab" * 32)
    assert f"the master serves https: use --master https://127.0.0.1:{port}" in str(refused.value)
    assert received == [b""]  # nothing was sent: no request, no token


@pytest.mark.usefixtures("another_host")
@pytest.mark.parametrize("flag", ["allow_plain_http_join", "insecure_first_join"])
def test_plain_http_to_another_host_only_when_asked(flag: str) -> None:
    assert join_trust.join_verify(_cfg("http://127.0.0.1:1", **{flag: True}), "ab" * 32) is True


def test_plain_http_on_loopback_is_taken() -> None:
    assert join_trust.join_verify(_cfg("http://127.0.0.1:1"), "ab" * 32) is True


def test_a_dropped_plain_request_names_https_and_reads_cleanly() -> None:
    exc = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    message = str(join_trust.join_error("http://127.0.0.1:8470", exc))
    assert "use https://" in message and ".." not in message


@contextmanager
def _relaying_attacker(leaf: trustme.LeafCert, fleet_ca_pem: bytes) -> Iterator[_Attacker]:
    """An on-path HTTPS server: relays the fleet's public /api/ca, keeps any join posted."""
    attacker = _Attacker()
    body = json.dumps({"ca_pem": fleet_ca_pem.decode()}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._answer(200, body)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers["content-length"])
            attacker.posted.append(self.rfile.read(length))
            self._answer(403, b"{}")

        def _answer(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    attacker.url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        yield attacker
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _Attacker:
    url = ""

    def __init__(self) -> None:
        self.posted: list[bytes] = []


def test_a_publicly_trusted_certificate_for_the_masters_name_gets_no_join_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's MITM: a certificate for the right host from a CA the system trusts
    (SSL_CERT_FILE stands for certifi's public roots), the fleet's CA relayed from the real
    master. Without api_ca_file the agent checks the fleet's CA alone: refused, no token."""
    public = trustme.CA(organization_name="Some Public CA")
    public.cert_pem.write_to_path(str(tmp_path / "public-roots.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "public-roots.pem"))
    fleet = CertificateAuthority.load_or_create(tmp_path / "fleet-ca")
    with _relaying_attacker(public.issue_cert("127.0.0.1"), fleet.ca_pem) as attacker:
        cfg = _cfg(
            attacker.url,
            data_dir=str(tmp_path / "agent"),
            token=join_string("JOIN-SECRET", fleet.ca_fingerprint),
        )
        with pytest.raises(ApiCertificateRefused) as refused:
            join(cfg, tls.Identity.in_directory(tmp_path / "agent" / "identity"))
    assert attacker.posted == []  # the token never left the agent
    message = str(refused.value)
    assert "api_names" in message and "--api-ca-file" in message
    assert not (tmp_path / "agent" / "identity").exists()


def test_with_api_ca_file_the_operators_ca_is_taken_and_the_fleet_still_checked(
    tmp_path: Path,
) -> None:
    """A files-mode master: the CA the operator named verifies it, and /api/ca fetched over that
    channel must still have the join string's fingerprint before the token goes."""
    operator = trustme.CA()
    operator.cert_pem.write_to_path(str(tmp_path / "operator-ca.pem"))
    fleet = CertificateAuthority.load_or_create(tmp_path / "fleet-ca")
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    api_ca_file = str(tmp_path / "operator-ca.pem")
    with _relaying_attacker(operator.issue_cert("127.0.0.1"), fleet.ca_pem) as master:
        cfg = _cfg(master.url, api_ca_file=api_ca_file)
        assert isinstance(join_trust.join_verify(cfg, fleet.ca_fingerprint), ssl.SSLContext)
        with pytest.raises(MasterNotTrusted):
            join_trust.join_verify(cfg, other.ca_fingerprint)
        without = _cfg(master.url)
        with pytest.raises(ApiCertificateRefused):
            join_trust.join_verify(without, fleet.ca_fingerprint)
    assert master.posted == []


@pytest.mark.parametrize("url", ["http://10.1.2.3:99999", "https://master.example:http"])
def test_a_port_that_is_not_one_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"must be http\(s\)://host:port.*port"):
        join_trust.join_verify(_cfg(url), "ab" * 32)
