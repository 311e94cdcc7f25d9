"""auth/api_trust.py: a client trusting the fleet's CA takes the master's certificate only."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trustme

from relaysync.auth.api_trust import (
    certificate_problem,
    default_api_context,
    file_api_context,
    fleet_api_context,
)
from relaysync.auth.ca import CertificateAuthority
from relaysync.constants import MASTER_NODE_NAME

TIMEOUT_S = 10.0
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@contextmanager
def tls_server(cert_file: Path, key_file: Path) -> Iterator[tuple[int, list[bytes]]]:
    """A one-connection HTTPS server on loopback; yields its port and what it received."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT_S)
    received: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT_S)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                received.append(tls.recv(65536))
                if received[-1]:
                    tls.sendall(RESPONSE)
        except (OSError, ssl.SSLError):
            if not received:
                received.append(b"")  # the client gave up in the handshake: no request came

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        thread.join(TIMEOUT_S)
        listener.close()


def _write(directory: Path, key_pem: bytes, cert_pem: bytes) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "c.pem").write_bytes(cert_pem)
    (directory / "k.pem").write_bytes(key_pem)
    return directory / "c.pem", directory / "k.pem"


def test_the_masters_certificate_from_the_fleet_ca_is_taken(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    cert, key = _write(tmp_path / "m", *ca.issue(MASTER_NODE_NAME, ["127.0.0.1"]))
    with tls_server(cert, key) as (port, _):
        r = httpx.get(f"https://127.0.0.1:{port}/", verify=fleet_api_context(ca.ca_pem))
    assert r.text == "ok"


@pytest.mark.parametrize("via_file", [False, True])
def test_a_fleet_nodes_certificate_is_refused_before_the_request_is_sent(
    tmp_path: Path, via_file: bool
) -> None:
    """Every node's certificate is valid for 127.0.0.1 and its name: it must not pass for the
    master's, or a fleet member could read the admin token the CLI sends."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    cert, key = _write(tmp_path / "n", *ca.issue("web-1", ["127.0.0.1", "localhost"]))
    verify = (
        file_api_context(tmp_path / "ca" / "ca.pem") if via_file else fleet_api_context(ca.ca_pem)
    )
    with tls_server(cert, key) as (port, received), pytest.raises(httpx.ConnectError) as refused:
        httpx.get(f"https://127.0.0.1:{port}/", headers={"Authorization": "x"}, verify=verify)
    why = certificate_problem(refused.value)
    assert why is not None and "'web-1', not to the master" in why
    assert received == [b""]


def test_a_ca_file_of_another_kind_is_trusted_as_it_is(tmp_path: Path) -> None:
    """--ca-file with the CA of an operator's own certificate (api_tls = "files")."""
    authority = trustme.CA()
    leaf = authority.issue_cert("127.0.0.1")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "chain.pem"))
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with tls_server(tmp_path / "chain.pem", tmp_path / "chain.pem") as (port, _):
        r = httpx.get(f"https://127.0.0.1:{port}/", verify=file_api_context(tmp_path / "ca.pem"))
    assert r.text == "ok"
    with tls_server(tmp_path / "chain.pem", tmp_path / "chain.pem") as (port, _):
        with pytest.raises(httpx.ConnectError) as refused:
            httpx.get(
                f"https://127.0.0.1:{port}/",
                verify=fleet_api_context(
                    CertificateAuthority.load_or_create(tmp_path / "fleet").ca_pem
                ),
            )
    assert certificate_problem(refused.value) is not None


def _other_ca_pem() -> bytes:
    return trustme.CA().cert_pem.bytes()


@pytest.mark.parametrize(
    "variant", ["fleet CA + another CA", "another CA + fleet CA", "fleet CA + a comment line"]
)
def test_a_ca_file_holding_the_fleet_ca_among_others_still_refuses_a_node(
    tmp_path: Path, variant: str
) -> None:
    """The name check follows the certificate presented, not the shape of the CA file: a bundle
    (or a trailing comment) with the fleet CA must not let a node read the admin token."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    pem = {
        "fleet CA + another CA": ca.ca_pem + _other_ca_pem(),
        "another CA + fleet CA": _other_ca_pem() + ca.ca_pem,
        "fleet CA + a comment line": ca.ca_pem + b"# the fleet CA of prod\n",
    }[variant]
    (tmp_path / "bundle.pem").write_bytes(pem)
    cert, key = _write(tmp_path / "n", *ca.issue("web-1", ["127.0.0.1", "localhost"]))
    verify = file_api_context(tmp_path / "bundle.pem")
    with tls_server(cert, key) as (port, received), pytest.raises(httpx.ConnectError) as refused:
        httpx.get(f"https://127.0.0.1:{port}/", headers={"Authorization": "x"}, verify=verify)
    why = certificate_problem(refused.value)
    assert why is not None and "'web-1', not to the master" in why
    assert received == [b""]
    master_cert, master_key = _write(tmp_path / "m", *ca.issue(MASTER_NODE_NAME, ["127.0.0.1"]))
    with tls_server(master_cert, master_key) as (port, _):
        assert httpx.get(f"https://127.0.0.1:{port}/", verify=verify).text == "ok"


def test_the_default_trust_store_with_the_fleet_ca_added_still_refuses_a_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --ca-file: SSL_CERT_FILE (a system bundle the fleet CA was added to) is checked so too."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    (tmp_path / "system.pem").write_bytes(_other_ca_pem() + ca.ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "system.pem"))
    cert, key = _write(tmp_path / "n", *ca.issue("web-1", ["127.0.0.1"]))
    with tls_server(cert, key) as (port, received), pytest.raises(httpx.ConnectError) as refused:
        httpx.get(f"https://127.0.0.1:{port}/", verify=default_api_context())
    assert "not to the master" in (certificate_problem(refused.value) or "")
    assert received == [b""]
