"""What an agent says when its join is refused matches what answered: the master's refusal of its
certificate request is not a token problem, a taken name is the master's own 409 (read from its
body's code), and a 409 from something else in front of the master (a proxy) is an unexpected
answer shown with its status and the start of its body, not "name taken"."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from tests.component.agent.test_first_join_trust import (
    _answered_by,
    _app_client,
    _cfg,
    _identity,
)

from relaysync.agent.enrollment import join
from relaysync.auth import ca as ca_module
from relaysync.auth.join_refusals import JoinRefusal
from relaysync.errors import ConfigError, CsrRefused, JoinAnswerRefused, JoinRefused
from relaysync.master.store import Store


@pytest.fixture
def master(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    with _app_client(store, tmp_path / "ca") as client:
        yield client


def _rsa_key_and_csr(name: str) -> tuple[bytes, bytes]:
    """What an agent of another release could send: an RSA key, which the master does not sign."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, csr.public_bytes(serialization.Encoding.PEM)


def test_the_masters_refusals_carry_a_code(master: TestClient) -> None:
    """The master's own refusals say which they are, beside the detail an operator reads."""
    token = master.post("/api/tokens/join", json={}).json()["token"]
    _key, csr = _rsa_key_and_csr("web-1")
    bad_csr = TestClient(master.app).post(
        "/api/join", json={"token": token, "name": "web-1", "csr_pem": csr.decode()}
    )
    assert bad_csr.status_code == 400
    assert bad_csr.json()["code"] == JoinRefusal.CSR_REFUSED and bad_csr.json()["detail"]
    bad_token = TestClient(master.app).post(
        "/api/join", json={"token": "rsj_nope", "name": "web-1", "csr_pem": csr.decode()}
    )
    assert bad_token.status_code == 403 and bad_token.json()["code"] == JoinRefusal.TOKEN


def test_a_refused_certificate_request_is_not_a_token_problem(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 400 from the CSR check ended "Ask the operator for a fresh join token": the token was
    good, and a fresh one fails the same way."""
    created = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master)
    monkeypatch.setattr(ca_module, "make_key_and_csr", _rsa_key_and_csr)
    with pytest.raises(CsrRefused) as refused:
        join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))
    said = str(refused.value)
    assert "certificate request" in said and "fresh join token" not in said, said
    assert not isinstance(refused.value, JoinRefused)
    assert not (tmp_path / "agent" / "identity").exists()
    assert master.get("/api/servers/web-1").status_code == 404  # the name is not taken


def test_a_bad_token_is_still_a_token_problem(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = master.post("/api/tokens/join", json={}).json()
    master.delete(f"/api/tokens/join/{created['id']}")
    _answered_by(monkeypatch, master)
    with pytest.raises(JoinRefused, match="fresh join token"):
        join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))


class _Conflict(http.server.BaseHTTPRequestHandler):
    """A proxy in front of the master that answers every POST with its own 409 page."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        page = b"<html><body><h1>409 Conflict</h1>upstream lock held</body></html>"
        self.send_response(409)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Conflict)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_409_not_from_the_master_is_an_unexpected_answer(
    master: TestClient, tmp_path: Path, proxy_url: str
) -> None:
    """Any 409 was read as "the master refused this agent's name", a proxy's too."""
    created = master.post("/api/tokens/join", json={}).json()
    cfg = msgspec.structs.replace(_cfg(tmp_path, created["join_string"]), master_url=proxy_url)
    with pytest.raises(JoinAnswerRefused) as refused:
        join(cfg, _identity(tmp_path))
    said = str(refused.value)
    assert proxy_url in said and "HTTP 409" in said and "409 Conflict</h1>upstream" in said, said
    assert "name" not in said.split("Nothing was saved")[0], said
    assert not isinstance(refused.value, ConfigError)
    assert not (tmp_path / "agent" / "identity").exists()
