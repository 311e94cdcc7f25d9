"""/api/policies with bandwidth windows and /api/mappings/{id}/transfer, over a real store and the REST API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.component.master._app import ADMIN, admin_app

from relaysync.master.store import Store
from relaysync.protocol.messages import BandwidthWindow

WORKDAYS = {"days": "mon-fri", "start": "08:00", "end": "20:00", "bandwidth_limit_mbit": 50.0}


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    # src and t1 share a group; t2 is in another region
    for name, region in (("src", "r"), ("t1", "r"), ("t2", "r2")):
        store.upsert_server(
            node_id=name * 8, name=name, region=region, group="g", address=f"{name}:1"
        )
    store.create_mapping(
        name="m", source="src", source_path="/a", targets=[("t1", "/b"), ("t2", "/c")]
    )
    app = admin_app(store, tmp_path)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def _spec(store: Store):  # type: ignore[no-untyped-def]
    (spec,) = store.assignment_for("src" * 8).mappings
    return spec


def _policy(store: Store, target: str):  # type: ignore[no-untyped-def]
    return next(t.policy for t in _spec(store).targets if t.node_id == target * 8)


def test_a_pair_policy_of_one_field_keeps_the_sections_other_fields(
    client: TestClient, store: Store
) -> None:
    """The operator trusts the inter-region link and compresses it harder, then caps the
    bandwidth of one pair only: that pair stays plain and compressed."""
    r = client.put("/api/policies", json={"scope": "inter_region", "tls": False, "zstd_level": 9})
    assert r.status_code == 200, r.text
    r = client.put(
        "/api/policies",
        json={"scope": "pair", "source": "src", "target": "t2", "bandwidth_limit_mbit": 50},
    )
    assert r.status_code == 200, r.text
    p = _policy(store, "t2")
    assert (p.tls, p.zstd_level, p.bandwidth_limit_mbit) == (False, 9, 50)


def test_a_section_policy_of_bandwidth_only_keeps_the_default_compression(
    client: TestClient, store: Store
) -> None:
    assert _policy(store, "t2").zstd_level == 3  # between regions, without a row
    r = client.put("/api/policies", json={"scope": "inter_region", "bandwidth_limit_mbit": 100})
    assert r.status_code == 200, r.text
    p = _policy(store, "t2")
    assert (p.zstd_level, p.bandwidth_limit_mbit, p.tls) == (3, 100, True)


def test_listed_policies_tell_set_fields_from_inherited_ones(client: TestClient) -> None:
    """null = the row leaves the field to its section (or the section's default); `effective`
    is what its links get."""
    client.put("/api/policies", json={"scope": "inter_region", "tls": False, "zstd_level": 9})
    r = client.put(
        "/api/policies",
        json={"scope": "pair", "source": "src", "target": "t2", "bandwidth_limit_mbit": 50},
    )
    pair = r.json()
    assert {
        k: pair[k]
        for k in (
            "source",
            "target",
            "tls",
            "transfer",
            "zstd_level",
            "bandwidth_limit_mbit",
            "windows",
            "timezone",
        )
    } == {
        "source": "src" * 8,
        "target": "t2" * 8,
        "tls": None,
        "transfer": None,
        "zstd_level": None,
        "bandwidth_limit_mbit": 50.0,
        "windows": None,
        "timezone": None,
    }
    assert pair["effective"] == {
        "tls": False,
        "transfer": "auto",
        "zstd_level": 9,
        "bandwidth_limit_mbit": 50.0,
        "windows": [],
        "timezone": "",
    }
    section, listed_pair = client.get("/api/policies").json()
    assert listed_pair == pair
    assert (
        section["scope"],
        section["tls"],
        section["zstd_level"],
        section["bandwidth_limit_mbit"],
    ) == ("inter_region", False, 9, None)
    assert section["effective"]["bandwidth_limit_mbit"] == 0.0
    client.put("/api/policies", json={"scope": "same_region", "transfer": "delta"})
    same_region = client.get("/api/policies").json()[2]
    assert (same_region["zstd_level"], same_region["effective"]["zstd_level"]) == (
        None,
        1,
    )  # the default


@pytest.mark.parametrize(
    "named", [{"source": "src"}, {"target": "t1"}, {"source": "src", "target": "t1"}]
)
def test_a_section_policy_naming_a_server_is_a_clear_422(
    client: TestClient, store: Store, named: dict
) -> None:
    """Stored, it would apply to no link: sections are looked up without servers."""
    r = client.put("/api/policies", json={"scope": "same_group", "zstd_level": 7, **named})
    assert r.status_code == 422, r.text
    assert "a section policy names no server; use scope 'pair' for one source and target" in r.text
    assert client.get("/api/policies").json() == []
    assert _policy(store, "t1").zstd_level == 0


def test_policy_windows_put_listed_and_assigned(client: TestClient, store: Store) -> None:
    night = {"start": "22:00", "end": "06:00", "bandwidth_limit_mbit": 0}
    r = client.put(
        "/api/policies",
        json={
            "scope": "same_group",
            "bandwidth_limit_mbit": 200,
            "windows": [WORKDAYS, night],
            "timezone": "Asia/Tokyo",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windows"] == [WORKDAYS, {"days": "", **night}] and body["timezone"] == "Asia/Tokyo"
    assert client.get("/api/policies").json()[0]["windows"] == body["windows"]
    policy = _spec(store).targets[0].policy
    assert policy.windows[0] == BandwidthWindow(**WORKDAYS) and policy.timezone == "Asia/Tokyo"
    assert (
        "windows"
        in client.get("/openapi.json").json()["components"]["schemas"]["PolicyIn"]["properties"]
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"windows": [{**WORKDAYS, "end": "20:75"}]},
            "window 1: window time '20:75' must be HH:MM",
        ),
        ({"windows": [{**WORKDAYS, "days": "weekend"}]}, "'wee' is not a day"),
        ({"windows": [WORKDAYS], "timezone": "Moon/Base"}, "timezone 'Moon/Base'"),
        ({"windows": [WORKDAYS] * 25}, "at most 24 bandwidth windows"),
        ({"windows": [{**WORKDAYS, "bandwdith_limit_mbit": 5}]}, "bandwdith_limit_mbit"),
        ({"windows": [{**WORKDAYS, "bandwidth_limit_mbit": -5}]}, "greater than or equal to 0"),
    ],
)
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
    assert (
        client.put("/api/mappings/m/transfer", json={"transfer": None}).json()["transfer"] is None
    )
    assert _spec(store).transfer_override == ""
    assert client.put("/api/mappings/nope/transfer", json={"transfer": "delta"}).status_code == 404
