"""An agent's first join trusts only the master its join string names (the CA's fingerprint):
whoever else answers POST /api/join (plain HTTP, a spoofed address) gets no say in whom the agent
trusts. The real master app over a real store and CA answers; an impostor is the same app over
its own CA, as an attacker on the path would run it."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi.testclient import TestClient

from relaysync.agent import enrollment
from relaysync.agent.enrollment import join, read_identity
from relaysync.auth.ca import CertificateAuthority, fingerprint
from relaysync.auth.tokens import join_string, split_join_string
from relaysync.config.schema import AgentConfig
from relaysync.constants import MASTER_NODE_NAME
from relaysync.errors import (
    ConfigError,
    IdentityUnusable,
    JoinAnswerRefused,
    JoinRefused,
    MasterNotTrusted,
)
from relaysync.master.app import create_app
from relaysync.master.events import EventBus
from relaysync.master.store import Store
from relaysync.transfer import tls

ADMIN = "admin-secret"
# loopback: plain http is taken there without a probe (no DNS, no connection from the test)
MASTER_URL = "http://127.0.0.1:8470"
MASTER_NODE_ID = "0123456789abcdef" * 4  # the control certificate's fingerprint


def _app_client(store: Store, ca_dir: Path) -> TestClient:
    app = create_app(
        store=store,
        ca=CertificateAuthority.load_or_create(ca_dir),
        events=EventBus(),
        admin_token=ADMIN,
        control_address="127.0.0.1:7000",
        on_change=lambda: None,
        master_node_id=MASTER_NODE_ID,
    )
    return TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"})


@pytest.fixture
def master(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    with _app_client(store, tmp_path / "ca") as client:
        yield client


def _answered_by(
    monkeypatch: pytest.MonkeyPatch,
    client: TestClient,
    *,
    impostor: bool = False,
    alter: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Send the agent's join to `client`'s app, whatever URL it posts to; the bodies it sent.
    An impostor drops whatever CA fingerprint the agent sends (its own app would refuse); one
    on the path relays the join to the master and `alter`s its answer on the way back."""
    sent: list[dict[str, Any]] = []

    def post(url: str, *, json: dict[str, Any], timeout: float, verify: object) -> httpx.Response:
        assert url == MASTER_URL + "/api/join" and timeout > 0
        assert verify is True  # plain http on loopback: nothing to check, nothing unchecked
        sent.append(json)
        forwarded = dict(json)
        if impostor:
            forwarded["token"] = split_join_string(json["token"])[0]
            forwarded.pop("ca_fingerprint", None)
        answer = TestClient(client.app).post("/api/join", json=forwarded)
        if alter is not None and answer.status_code == 200:
            return httpx.Response(200, json=alter(answer.json()))
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
    assert pin.node_id == MASTER_NODE_ID
    ca_pem = (tmp_path / "ca" / "ca.pem").read_bytes()
    assert _identity(tmp_path).ca_path.read_bytes() == ca_pem
    assert master.get("/api/servers/web-1").status_code == 200


def test_plain_http_to_another_host_is_refused_before_anything_is_sent(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join over http to a host that is not loopback stops at the config check: no token is
    posted, nothing saved (the TLS probe that only words the error is stubbed: no DNS)."""
    from relaysync.agent import _join_trust

    created = master.post("/api/tokens/join", json={}).json()
    sent = _answered_by(monkeypatch, master)
    probed: list[tuple[str, int]] = []
    monkeypatch.setattr(_join_trust, "answers_tls", lambda h, p: probed.append((h, p)) or False)
    cfg = msgspec.structs.replace(
        _cfg(tmp_path, created["join_string"]), master_url="http://master.example:8470"
    )
    with pytest.raises(ConfigError, match="use --master https://master.example:8470"):
        join(cfg, _identity(tmp_path))
    assert sent == [] and probed == [("master.example", 8470)]
    assert not (tmp_path / "agent" / "identity").exists()


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


# --- The answer is checked whole, and saved whole or not at all ---


@pytest.fixture
def attacker_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "attacker-ca")


def _with_ca_appended(attacker: CertificateAuthority) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """On the path: the real master's answer (the right CA first, a genuine certificate), the
    attacker's CA after it and its own 'relaysync-master' as the master's node id. A trust store
    built from that ca.pem would take the attacker's control server as the master."""
    master_key, master_cert = attacker.issue(MASTER_NODE_NAME, ["127.0.0.1"])

    def alter(answer: dict[str, Any]) -> dict[str, Any]:
        return answer | {
            "ca_pem": answer["ca_pem"] + attacker.ca_pem.decode(),
            "master_node_id": fingerprint(master_cert),
        }

    return alter


def test_a_ca_appended_to_the_fleets_on_the_way_is_refused_and_nothing_is_saved(
    master: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    attacker_ca: CertificateAuthority,
) -> None:
    created = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master, alter=_with_ca_appended(attacker_ca))
    with pytest.raises(JoinAnswerRefused, match="ca_pem must be exactly one PEM certificate"):
        join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))
    assert not (tmp_path / "agent").exists()


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("ca_pem", lambda pem, other: pem + "trailing text\n"),
        ("ca_pem", lambda pem, other: other + pem),  # the attacker's first: another CA
        ("ca_pem", lambda pem, other: pem.replace("CERTIFICATE", "TRUSTED CERTIFICATE")),
        ("cert_pem", lambda pem, other: pem + other),
        ("cert_pem", lambda pem, other: "x" + pem),
    ],
)
def test_each_certificate_field_must_be_one_pem_certificate_alone(
    master: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    attacker_ca: CertificateAuthority,
    field: str,
    change: Callable[[str, str], str],
) -> None:
    created = master.post("/api/tokens/join", json={}).json()
    other = attacker_ca.ca_pem.decode()
    _answered_by(monkeypatch, master, alter=lambda a: a | {field: change(a[field], other)})
    with pytest.raises((JoinAnswerRefused, MasterNotTrusted)):
        join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))
    assert not (tmp_path / "agent").exists()


def test_what_is_saved_is_the_checked_certificates_serialised_again(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """White space around a certificate and CRLF lines are PEM still: taken, saved as checked."""
    created = master.post("/api/tokens/join", json={}).json()

    def reformat(answer: dict[str, Any]) -> dict[str, Any]:
        return answer | {k: "\n " + answer[k].replace("\n", "\r\n") for k in ("ca_pem", "cert_pem")}

    _answered_by(monkeypatch, master, alter=reformat)
    join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))
    identity = _identity(tmp_path)
    assert identity.ca_path.read_bytes() == (tmp_path / "ca" / "ca.pem").read_bytes()
    assert identity.cert_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert b"\r" not in identity.cert_path.read_bytes()


def _drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda answer: {k: v for k, v in answer.items() if k != key}


def _set(key: str, value: object) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda answer: answer | {key: value}


@pytest.mark.parametrize(
    "alter",
    [
        _drop("control_address"),
        _set("control_address", 7000),
        _set("control_address", "no-port"),
        _drop("node_id"),
        _set("node_id", "ab" * 32),
        _set("master_node_id", "not-a-fingerprint"),
        _set("master_node_id", 12),
        _drop("cert_pem"),
        _set("ca_pem", ["a list"]),
    ],
    ids=[
        "no-control-address",
        "control-address-number",
        "control-address-no-port",
        "no-node-id",
        "node-id-of-another-cert",
        "master-node-id-malformed",
        "master-node-id-number",
        "no-cert",
        "ca-not-text",
    ],
)
def test_a_malformed_answer_saves_nothing(
    master: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    alter: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """A key and certificates saved before a bad field was found made an identity without
    master.json: every later start failed (FileNotFoundError) until someone deleted it."""
    created = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master, alter=alter)
    with pytest.raises(JoinAnswerRefused, match="Nothing was saved"):
        join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))
    assert not (tmp_path / "agent").exists()


def test_a_join_interrupted_while_saving_leaves_no_identity(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (or a crash) while writing: no identity at all, and the next join works."""
    created = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master)
    written: list[Path] = []
    real_write = enrollment._write_synced

    def write(path: Path, data: bytes) -> None:
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real_write(path, data)

    monkeypatch.setattr(enrollment, "_write_synced", write)
    with pytest.raises(OSError, match="No space"):
        join(_cfg(tmp_path, created["join_string"]), _identity(tmp_path))
    identity = _identity(tmp_path)
    assert not identity.key_path.parent.exists()
    monkeypatch.setattr(enrollment, "_write_synced", real_write)
    assert master.delete("/api/servers/web-1").status_code == 204  # its name, taken by then
    join(_cfg(tmp_path, created["join_string"]), identity)
    assert identity.exists() and read_identity(identity).node_id == MASTER_NODE_ID
    assert sorted(p.name for p in identity.key_path.parent.parent.iterdir()) == ["identity"]


def test_files_left_in_the_identity_directory_are_refused_before_joining(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key an older release wrote before its join failed: neither overwritten nor mixed with
    a new certificate; the agent says which directory to delete."""
    created = master.post("/api/tokens/join", json={}).json()
    sent = _answered_by(monkeypatch, master)
    identity = _identity(tmp_path)
    identity.key_path.parent.mkdir(parents=True)
    identity.key_path.write_bytes(b"an older key")
    with pytest.raises(IdentityUnusable, match="node.key") as refused:
        join(_cfg(tmp_path, created["join_string"]), identity)
    assert str(identity.key_path.parent) in str(refused.value) and "--token" in str(refused.value)
    assert sent == [] and identity.key_path.read_bytes() == b"an older key"


def test_a_saved_identity_must_trust_one_ca_and_have_its_master_file(
    master: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    attacker_ca: CertificateAuthority,
) -> None:
    """An identity an older release saved from an altered answer (two CAs), or without
    master.json (its join stopped half-way), stops the agent with what to do."""
    created = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master)
    identity = _identity(tmp_path)
    join(_cfg(tmp_path, created["join_string"]), identity)
    ca_pem = identity.ca_path.read_bytes()
    identity.ca_path.write_bytes(ca_pem + attacker_ca.ca_pem)
    with pytest.raises(IdentityUnusable, match="ca.pem must hold exactly one certificate"):
        read_identity(identity)
    identity.ca_path.write_bytes(ca_pem)
    (identity.key_path.parent / "master.json").unlink()
    with pytest.raises(IdentityUnusable, match="master.json is missing") as refused:
        read_identity(identity)
    assert f"delete {identity.key_path.parent}" in str(refused.value)


def test_a_refusal_says_its_reason_once(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent wrapped the master's whole JoinRefused in its own: "The master refused to let
    this agent join: The master refused to let this agent join: ... token.. Ask the operator
    for a fresh join token." """
    created = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master)
    with pytest.raises(JoinRefused) as refused:
        join(_cfg(tmp_path, created["token"], ca_fingerprint="ab" * 32), _identity(tmp_path))
    said = str(refused.value)
    assert said.count("refused to let this agent join") == 1 and "another fleet" in said
    assert said.count("fresh join token") == 1 and ".." not in said


def test_a_name_in_use_is_refused_as_the_name_not_the_token(
    master: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 409 (the name is taken) said "Ask the operator for a fresh join token": the token was
    good, and a fresh one fails the same way."""
    first = master.post("/api/tokens/join", json={}).json()
    _answered_by(monkeypatch, master)
    join(_cfg(tmp_path / "one", first["join_string"]), _identity(tmp_path / "one"))
    second = master.post("/api/tokens/join", json={}).json()
    with pytest.raises(ConfigError) as refused:
        join(_cfg(tmp_path / "two", second["join_string"]), _identity(tmp_path / "two"))
    said = str(refused.value)
    assert "name 'web-1'" in said and "relaysync server remove web-1" in said
    assert "fresh join token" not in said and not isinstance(refused.value, JoinRefused)
