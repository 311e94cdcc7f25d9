"""An agent's first join trusts only the master its join string names (the CA's fingerprint):
whoever else answers POST /api/join (plain HTTP, a spoofed address) gets no say in whom the agent
trusts. The real master app over a real store and CA answers; an impostor is the same app over
its own CA, as an attacker on the path would run it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from relaysync.agent.enrollment import join
from relaysync.auth.ca import CertificateAuthority, fingerprint
from relaysync.auth.tokens import join_string, split_join_string
from relaysync.config.schema import AgentConfig
from relaysync.errors import ConfigError, JoinRefused, MasterNotTrusted
from relaysync.master.app import create_app
from relaysync.master.events import EventBus
from relaysync.master.store import Store
from relaysync.transfer import tls

ADMIN = "admin-secret"
MASTER_URL = "http://master.example:8470"


def _app_client(store: Store, ca_dir: Path) -> TestClient:
    app = create_app(
        store=store,
        ca=CertificateAuthority.load_or_create(ca_dir),
        events=EventBus(),
        admin_token=ADMIN,
        control_address="127.0.0.1:7000",
        on_change=lambda: None,
        master_node_id="m" * 64,
    )
    return TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"})


@pytest.fixture
def master(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    with _app_client(store, tmp_path / "ca") as client:
        yield client


def _answered_by(
    monkeypatch: pytest.MonkeyPatch, client: TestClient, *, impostor: bool = False
) -> list[dict[str, Any]]:
    """Send the agent's join to `client`'s app, whatever URL it posts to; the bodies it sent.
    An impostor drops whatever CA fingerprint the agent sends (its own app would refuse)."""
    sent: list[dict[str, Any]] = []

    def post(url: str, *, json: dict[str, Any], timeout: float) -> httpx.Response:
        assert url == MASTER_URL + "/api/join" and timeout > 0
        sent.append(json)
        forwarded = dict(json)
        if impostor:
            forwarded["token"] = split_join_string(json["token"])[0]
            forwarded.pop("ca_fingerprint", None)
        answer = TestClient(client.app).post("/api/join", json=forwarded)
        return httpx.Response(answer.status_code, content=answer.content)

    monkeypatch.setattr(httpx, "post", post)
    return sent


def _cfg(tmp_path: Path, token: str, **extra: Any) -> AgentConfig:
    return AgentConfig(
        master_url=MASTER_URL, name="web-1", data_dir=str(tmp_path / "agent"), token=token, **extra
    )


def _identity(tmp_path: Path) -> tls.Identity:
    return tls.Identity.in_directory(tmp_path / "agent" / "identity")


def test_a_join_string_names_the_fleets_ca(master: TestClient, tmp_path: Path) -> None:
    created = master.post("/api/tokens/join", json={}).json()
    ca_pem = (tmp_path / "ca" / "ca.pem").read_bytes()
    assert created["ca_fingerprint"] == fingerprint(ca_pem)
    assert created["join_string"] == join_string(created["token"], fingerprint(ca_pem))
    assert split_join_string(created["join_string"]) == (created["token"], fingerprint(ca_pem))


def test_the_agent_joins_the_master_its_join_string_names(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = master.post("/api/tokens/join", json={}).json()
    sent = _answered_by(monkeypatch, master)
    pin = join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))
    assert [(s["token"], s["ca_fingerprint"]) for s in sent] == [
        (created["token"], created["ca_fingerprint"])  # the token alone, the CA it expects apart
    ]
    assert pin.node_id == "m" * 64
    ca_pem = (tmp_path / "ca" / "ca.pem").read_bytes()
    assert _identity(tmp_path).ca_path.read_bytes() == ca_pem
    assert master.get("/api/servers/web-1").status_code == 200


def test_an_impostor_answering_the_join_is_refused_and_nothing_is_saved(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """The impostor takes the token (here it shares the master's store, as if it relayed the
    join to the master): only the CA check stops it."""
    created = master.post("/api/tokens/join", json={}).json()
    with _app_client(store, tmp_path / "attacker-ca") as impostor:
        _answered_by(monkeypatch, impostor, impostor=True)
        with pytest.raises(MasterNotTrusted) as refused:
            join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))
    attacker = fingerprint((tmp_path / "attacker-ca" / "ca.pem").read_bytes())
    message = str(refused.value)
    assert attacker in message and created["ca_fingerprint"] in message
    assert MASTER_URL in message and "Nothing was saved" in message
    assert not (tmp_path / "agent").exists()  # no key, CA, certificate or master.json


def test_a_bare_token_needs_the_ca_fingerprint_or_an_explicit_insecure_join(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = master.post("/api/tokens/join", json={}).json()
    sent = _answered_by(monkeypatch, master)
    with pytest.raises(ConfigError, match="names no CA") as refused:
        join(_cfg(tmp_path, created["token"]), _identity(tmp_path))
    assert "--ca-fingerprint" in str(refused.value) and "--insecure-first-join" in str(
        refused.value
    )
    assert sent == []  # refused before the token went anywhere

    ca_pem = (tmp_path / "ca" / "ca.pem").read_bytes()
    openssl_style = ":".join(f"{b:02X}" for b in bytes.fromhex(fingerprint(ca_pem)))
    join(_cfg(tmp_path, created["token"], ca_fingerprint=openssl_style), _identity(tmp_path))
    assert _identity(tmp_path).ca_path.read_bytes() == ca_pem


def test_a_fingerprint_given_with_a_bare_token_is_checked_too(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master)
    with pytest.raises(JoinRefused, match="another fleet"):  # the master refuses it first
        join(_cfg(tmp_path, created["token"], ca_fingerprint="ab" * 32), _identity(tmp_path))
    assert master.get("/api/servers").json() == []  # so the name is still free
    with pytest.raises(ConfigError, match="different CAs"):
        join(_cfg(tmp_path, created["join_string"], ca_fingerprint="ab" * 32), _identity(tmp_path))
    assert not (tmp_path / "agent").exists()


def test_an_insecure_first_join_takes_whichever_ca_answers(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master)
    join(_cfg(tmp_path, created["token"], insecure_first_join=True), _identity(tmp_path))
    assert _identity(tmp_path).exists()


def test_the_master_refuses_a_join_string_for_another_ca(master: TestClient) -> None:
    """An older agent sends the join string whole: the master takes its token only if the
    fingerprint is its own CA's."""
    from relaysync.auth.ca import make_key_and_csr

    created = master.post("/api/tokens/join", json={}).json()
    anonymous = TestClient(master.app)

    def status(token: str, name: str) -> int:
        _key, csr = make_key_and_csr(name)
        body = {"token": token, "name": name, "csr_pem": csr.decode()}
        return anonymous.post("/api/join", json=body).status_code

    assert status(join_string(created["token"], "ab" * 32), "web-1") == 403
    _key, csr = make_key_and_csr("web-1")
    body = {"token": created["token"], "name": "web-1", "csr_pem": csr.decode()}
    answer = anonymous.post("/api/join", json=body | {"ca_fingerprint": "AB:" * 31 + "AB"})
    assert answer.status_code == 403
    assert "its join string is for another fleet" in answer.json()["detail"]
    assert master.get("/api/servers").json() == []  # its name is not taken
    assert status(created["join_string"], "web-1") == 200
