"""/api/tokens over a real store and the REST API: list and revoke join and API tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from relaysync.auth.ca import CertificateAuthority, make_key_and_csr
from relaysync.master.app import create_app
from relaysync.master.events import EventBus, EventType
from relaysync.master.store import Store

ADMIN = "admin-secret"


@pytest.fixture
def events() -> EventBus:
    return EventBus()


@pytest.fixture
def client(store: Store, tmp_path: Path, events: EventBus) -> Iterator[TestClient]:
    app = create_app(
        store=store,
        ca=CertificateAuthority.load_or_create(tmp_path / "ca"),
        events=events,
        admin_token=ADMIN,
        control_address="127.0.0.1:7000",
        on_change=lambda: None,
    )
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def join_with(client: TestClient, token: str, name: str) -> int:
    _key, csr = make_key_and_csr(name)
    anonymous = TestClient(client.app)
    body = {"token": token, "name": name, "csr_pem": csr.decode()}
    return anonymous.post("/api/join", json=body).status_code


def test_a_revoked_join_token_can_no_longer_join(client: TestClient, events: EventBus) -> None:
    leaked = client.post("/api/tokens/join", json={}).json()
    other = client.post("/api/tokens/join", json={"ttl_s": 3600}).json()
    assert join_with(client, leaked["token"], "web-1") == 200

    listed = client.get("/api/tokens/join").json()
    assert [t["id"] for t in listed] == [leaked["id"], other["id"]]
    assert listed[1]["expires_at"] is not None and not listed[1]["expired"]

    assert client.delete(f"/api/tokens/join/{leaked['id']}").status_code == 204
    assert join_with(client, leaked["token"], "web-2") == 403
    assert join_with(client, other["token"], "web-2") == 200
    assert client.get("/api/servers/web-1").status_code == 200  # joined nodes stay
    assert [t["id"] for t in client.get("/api/tokens/join").json()] == [other["id"]]

    (revoked,) = [e for e in events.since(0) if e.type is EventType.TOKEN_REVOKED]
    assert revoked.data == {"kind": "join", "id": leaked["id"]}
    assert leaked["token"] not in repr(events.since(0))


def test_a_revoked_api_token_gets_401_at_once(client: TestClient, events: EventBus) -> None:
    created = client.post("/api/tokens/api", json={"name": "departed colleague"}).json()
    theirs = TestClient(client.app, headers={"Authorization": f"Bearer {created['token']}"})
    assert theirs.get("/api/servers").status_code == 200

    listed = client.get("/api/tokens/api").json()
    assert [(t["id"], t["name"]) for t in listed] == [(created["id"], "departed colleague")]
    assert client.delete(f"/api/tokens/api/{created['id']}").status_code == 204
    resp = theirs.get("/api/servers")
    assert resp.status_code == 401 and "invalid token" in resp.json()["detail"]
    assert client.get("/api/tokens/api").json() == []

    (revoked,) = [e for e in events.since(0) if e.type is EventType.TOKEN_REVOKED]
    assert revoked.data == {"kind": "api", "id": created["id"], "name": "departed colleague"}


def test_an_api_token_may_revoke_itself_and_the_admin_token_stays(client: TestClient) -> None:
    """A client that finds its own token leaked revokes it with it; the admin token is not in
    the store, so no revocation can lock the operator out."""
    created = client.post("/api/tokens/api", json={"name": "ci"}).json()
    own = TestClient(client.app, headers={"Authorization": f"Bearer {created['token']}"})
    assert own.delete(f"/api/tokens/api/{created['id']}").status_code == 204
    assert own.get("/api/tokens/api").status_code == 401
    assert client.get("/api/tokens/api").status_code == 200


def test_listings_show_no_secret(client: TestClient) -> None:
    join = client.post("/api/tokens/join", json={}).json()
    api = client.post("/api/tokens/api", json={"name": "ci"}).json()
    text = client.get("/api/tokens/join").text + client.get("/api/tokens/api").text
    assert join["token"] not in text and api["token"] not in text
    assert set(client.get("/api/tokens/join").json()[0]) == {
        "id",
        "created_at",
        "expires_at",
        "expired",
        "created_by",
    }
    assert set(client.get("/api/tokens/api").json()[0]) == {
        "id",
        "name",
        "created_at",
        "scope",
        "created_by",
    }


def test_unknown_or_malformed_ids(client: TestClient) -> None:
    resp = client.delete("/api/tokens/join/" + "0" * 12)
    assert resp.status_code == 404
    assert resp.json() == {"detail": "Join token '000000000000' not found."}
    assert client.delete("/api/tokens/api/999").status_code == 404
    assert client.delete("/api/tokens/join/abc").status_code == 422
    assert client.delete("/api/tokens/api/abc").status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/tokens/join"),
        ("GET", "/api/tokens/api"),
        ("DELETE", "/api/tokens/join/000000000000"),
        ("DELETE", "/api/tokens/api/1"),
    ],
)
def test_token_routes_need_a_token(client: TestClient, method: str, path: str) -> None:
    assert TestClient(client.app).request(method, path).status_code == 401


# --- Scopes: a read token reads; only the admin token and admin API tokens write ---

WRITES = [
    ("POST", "/api/mappings", {"name": "m", "source": "web-1", "path": "/srv"}),
    ("PUT", "/api/retention", {}),
    ("PATCH", "/api/sites/1", {}),
    ("DELETE", "/api/servers/web-1", None),
    ("POST", "/api/tokens/api", {"name": "spare"}),
    ("POST", "/api/tokens/join", {}),
    ("DELETE", "/api/tokens/join/000000000000", None),
    ("DELETE", "/api/tokens/api/1", None),
]


def bearing(client: TestClient, token: str) -> TestClient:
    return TestClient(client.app, headers={"Authorization": f"Bearer {token}"})


def test_a_read_token_reads_but_every_write_is_refused_with_403(client: TestClient) -> None:
    """Refused before the route runs (unknown ids too), naming the scope and the way out."""
    created = client.post("/api/tokens/api", json={"name": "grafana", "scope": "read"}).json()
    assert created["scope"] == "read"
    reader = bearing(client, created["token"])
    for path in ("/api/servers", "/api/mappings", "/api/tokens/api", "/api/tokens/join"):
        assert reader.get(path).status_code == 200, path
    assert reader.head("/api/servers").status_code != 403
    for method, path, body in WRITES:
        resp = reader.request(method, path, json=body)
        assert resp.status_code == 403, (method, path, resp.text)
        detail = resp.json()["detail"]
        assert "scope 'read'" in detail and method in detail and "--scope admin" in detail
    assert [t["name"] for t in client.get("/api/tokens/api").json()] == ["grafana"]
    assert client.get("/api/tokens/join").json() == []


def test_a_read_token_cannot_mint_a_spare_that_survives_its_revocation(
    client: TestClient,
) -> None:
    """The leak of review #5: after the operator revokes a leaked read token, nothing it did
    can still reach the API."""
    leaked = client.post("/api/tokens/api", json={"name": "grafana", "scope": "read"}).json()
    reader = bearing(client, leaked["token"])
    assert reader.post("/api/tokens/api", json={"name": "grafana"}).status_code == 403
    assert reader.post("/api/tokens/api", json={"name": "x", "scope": "admin"}).status_code == 403
    assert reader.post("/api/tokens/join", json={}).status_code == 403
    assert client.delete(f"/api/tokens/api/{leaked['id']}").status_code == 204
    assert reader.get("/api/servers").status_code == 401
    assert client.get("/api/tokens/api").json() == []
    assert client.get("/api/tokens/join").json() == []


def test_an_admin_api_token_creates_and_revokes_tokens_and_is_recorded(
    client: TestClient, events: EventBus
) -> None:
    ops = client.post("/api/tokens/api", json={"name": "ops", "scope": "admin"}).json()
    admin_api = bearing(client, ops["token"])
    made = admin_api.post("/api/tokens/api", json={"name": "ci", "scope": "read"})
    assert made.status_code == 201 and made.json()["scope"] == "read"
    join = admin_api.post("/api/tokens/join", json={"ttl_s": 60})
    assert join.status_code == 201
    by = {t["name"]: (t["scope"], t["created_by"]) for t in client.get("/api/tokens/api").json()}
    assert by == {"ops": ("admin", "admin"), "ci": ("read", f"api:{ops['id']}")}
    (listed_join,) = client.get("/api/tokens/join").json()
    assert listed_join["created_by"] == f"api:{ops['id']}"
    created = [e.data for e in events.since(0) if e.type is EventType.TOKEN_CREATED]
    assert created[1]["created_by"] == f"api:{ops['id']}" and created[1]["scope"] == "read"
    assert admin_api.delete(f"/api/tokens/api/{made.json()['id']}").status_code == 204
    assert admin_api.delete(f"/api/tokens/join/{join.json()['id']}").status_code == 204
    assert admin_api.put("/api/retention", json={}).status_code != 403


def test_a_new_api_token_is_admin_unless_asked_otherwise(client: TestClient) -> None:
    """As before scopes: scripts that create a token and then write with it keep working."""
    created = client.post("/api/tokens/api", json={"name": "ci"}).json()
    assert created["scope"] == "admin"
    bad = client.post("/api/tokens/api", json={"name": "ci", "scope": "root"})
    assert bad.status_code == 422
