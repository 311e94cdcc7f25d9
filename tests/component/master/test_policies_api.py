"""/api/policies with bandwidth windows and /api/mappings/{id}/transfer, over a real store and the REST API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from relaysync.auth.ca import CertificateAuthority
from relaysync.master.app import create_app
from relaysync.master.events import EventBus
from relaysync.master.store import Store
from relaysync.protocol.messages import BandwidthWindow

ADMIN = "admin-secret"
WORKDAYS = {"days": "mon-fri", "start": "08:00", "end": "20:00", "bandwidth_limit_mbit": 50.0}


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    for name in ("src", "t1"):
        store.upsert_server(node_id=name * 8, name=name, region="r", group="g", address=f"{name}:1")
    store.create_mapping(name="m", source="src", source_path="/a", targets=[("t1", "/b")])
    app = create_app(store=store, ca=CertificateAuthority.load_or_create(tmp_path / "ca"), events=EventBus(),
                     admin_token=ADMIN, control_address="127.0.0.1:7000", on_change=lambda: None)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def _spec(store: Store):  # type: ignore[no-untyped-def]
    (spec,) = store.assignment_for("src" * 8).mappings
    return spec


def test_policy_windows_put_listed_and_assigned(client: TestClient, store: Store) -> None:
    night = {"start": "22:00", "end": "06:00", "bandwidth_limit_mbit": 0}
    r = client.put("/api/policies", json={"scope": "same_group", "bandwidth_limit_mbit": 200,
                                          "windows": [WORKDAYS, night], "timezone": "Asia/Tokyo"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windows"] == [WORKDAYS, {"days": "", **night}] and body["timezone"] == "Asia/Tokyo"
    assert client.get("/api/policies").json()[0]["windows"] == body["windows"]
    policy = _spec(store).targets[0].policy
    assert policy.windows[0] == BandwidthWindow(**WORKDAYS) and policy.timezone == "Asia/Tokyo"
    assert "windows" in client.get("/openapi.json").json()["components"]["schemas"]["PolicyIn"]["properties"]


@pytest.mark.parametrize(("body", "message"), [
    ({"windows": [{**WORKDAYS, "end": "20:75"}]}, "window 1: window time '20:75' must be HH:MM"),
    ({"windows": [{**WORKDAYS, "days": "weekend"}]}, "'wee' is not a day"),
    ({"windows": [WORKDAYS], "timezone": "Moon/Base"}, "timezone 'Moon/Base'"),
    ({"windows": [WORKDAYS] * 25}, "at most 24 bandwidth windows"),
    ({"windows": [{**WORKDAYS, "bandwdith_limit_mbit": 5}]}, "bandwdith_limit_mbit"),
    ({"windows": [{**WORKDAYS, "bandwidth_limit_mbit": -5}]}, "greater than or equal to 0"),
])
def test_bad_windows_are_a_clear_422(client: TestClient, body: dict, message: str) -> None:
    r = client.put("/api/policies", json={"scope": "same_group", **body})
    assert r.status_code == 422
    assert message in r.text, r.text


def test_mapping_transfer_override(client: TestClient, store: Store) -> None:
    assert client.get("/api/mappings/m/transfer").json() == {"mapping_id": 1, "transfer": None}
    client.put("/api/policies", json={"scope": "same_group", "transfer": "delta"})
    r = client.put("/api/mappings/m/transfer", json={"transfer": "whole"})
    assert r.status_code == 200, r.text
    assert client.get("/api/mappings/m/transfer").json()["transfer"] == "whole"
    spec = _spec(store)
    assert (spec.transfer_override, spec.targets[0].policy.transfer) == ("whole", "delta")
    assert client.put("/api/mappings/m/transfer", json={"transfer": "rsync"}).status_code == 422
    assert client.put("/api/mappings/m/transfer", json={}).status_code == 422  # null must be said
    assert client.put("/api/mappings/m/transfer", json={"transfer": None}).json()["transfer"] is None
    assert _spec(store).transfer_override == ""
    assert client.put("/api/mappings/nope/transfer", json={"transfer": "delta"}).status_code == 404
