"""The monitoring REST resources over a real store (SQLite and PostgreSQL) and a fed monitor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from tests.component.monitor._api_client import monitored_api

from relaysync.master.store import Store
from relaysync.monitor.collectors import sample
from relaysync.monitor.engine import MonitorService
from relaysync.protocol.messages import MetricsReport

NODE = "c" * 64


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[tuple[TestClient, MonitorService]]:
    store.upsert_server(node_id=NODE, name="web1", region="r", group="g", address="127.0.0.1:1")
    with monitored_api(store, tmp_path) as pair:
        yield pair


def test_thresholds_crud_and_validation(client: tuple[TestClient, MonitorService]) -> None:
    c, _ = client
    r = c.post(
        "/api/thresholds",
        json={
            "scope": "group",
            "target": "g",
            "metric": "cpu_percent",
            "operator": ">=",
            "value": 90,
            "for_s": 30,
            "hysteresis": 5,
        },
    )
    assert r.status_code == 201 and r.json()["id"] >= 1
    assert (
        c.post("/api/thresholds", json={"metric": "x", "operator": "~", "value": 1}).status_code
        == 422
    )
    assert (
        c.post("/api/thresholds", json={"metric": "x", "value": 1, "for_s": -1}).status_code == 422
    )
    assert (
        c.post(
            "/api/thresholds", json={"scope": "server", "target": "nope", "metric": "x", "value": 1}
        ).status_code
        == 404
    )
    assert [t["metric"] for t in c.get("/api/thresholds").json()] == ["cpu_percent"]
    assert c.delete(f"/api/thresholds/{r.json()['id']}").status_code == 204
    assert c.delete(f"/api/thresholds/{r.json()['id']}").status_code == 404


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_threshold_that_is_no_number_is_a_422_without_sql(
    client: tuple[TestClient, MonitorService], value: str
) -> None:
    """NaN reached the database (as NULL: a 503 whose detail held the INSERT and its
    parameters); it is refused before the store now, as is an infinite value."""
    c, _ = client
    r = c.post(
        "/api/thresholds",
        content=f'{{"metric": "cpu_percent", "value": {value}}}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "finite" in r.json()["detail"], r.text
    assert "SQL" not in r.text and c.get("/api/thresholds").json() == []


def test_probes_refuse_option_like_hosts(client: tuple[TestClient, MonitorService]) -> None:
    c, _ = client
    assert (
        c.post("/api/probes", json={"name": "p", "kind": "ping", "host": "-f"}).status_code == 422
    )
    assert (
        c.post("/api/probes", json={"name": "p", "kind": "tcp", "host": "127.0.0.1"}).status_code
        == 422
    )
    r = c.post(
        "/api/probes",
        json={"name": "p", "kind": "tcp", "host": "127.0.0.1", "port": 9, "server": "web1"},
    )
    assert r.status_code == 201 and r.json()["last"] is None


def test_channels_hide_secrets_and_check_config(client: tuple[TestClient, MonitorService]) -> None:
    c, _ = client
    body = {
        "name": "mail",
        "kind": "email",
        "config": {"host": "h", "sender": "a@b", "recipients": ["c@d"], "password": "pw"},
    }
    r = c.post("/api/alert-channels", json=body)
    assert r.status_code == 201 and r.json()["config"]["password"] == "********"
    assert "pw" not in c.get("/api/alert-channels").text
    assert (
        c.post(
            "/api/alert-channels", json={"name": "x", "kind": "webhook", "config": {}}
        ).status_code
        == 422
    )
    assert c.post("/api/alert-channels", json={"name": "x", "kind": "fax"}).status_code == 422


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        (
            "webhook",
            {
                "url": "https://hooks.example/alert",
                "headers": {"Authorization": "Bearer hook-SECRET"},
            },
        ),
        (
            "sms",
            {
                "url": "https://sms.example/send",
                "headers": {"X-Api-Key": "sms-SECRET"},
                "body_template": "x",
            },
        ),
        ("webhook", {"url": "https://bot:url-SECRET@hooks.example/a?token=q-SECRET&channel=ops"}),
        (
            "sms",
            {
                "url": "https://sms.example/send?key=q-SECRET",
                "api_key": "k-SECRET",
                "body_template": "x",
            },
        ),
    ],
)
def test_channels_hide_every_credential(
    client: tuple[TestClient, MonitorService], kind: str, config: dict
) -> None:
    """Headers (Authorization, API keys), secret-looking keys and a URL's userinfo and query
    values never come back: every API token may list the channels."""
    c, _ = client
    created = c.post("/api/alert-channels", json={"name": "c", "kind": kind, "config": config})
    assert created.status_code == 201, created.text
    for body in (created.text, c.get("/api/alert-channels").text):
        assert "SECRET" not in body, body
    shown = created.json()["config"]
    assert shown["url"].startswith("https://") and shown["url"].split("?")[0].endswith("/********")
    assert all(v == "********" for v in shown.get("headers", {}).values())


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("webhook", {"url": "https://hooks.slack.com/services/T0AAAA/B0BBBB/XyZ-SECRET-123"}),
        (
            "sms",
            {
                "url": "https://rest.nexmo.com/sms/json",
                "content_type": "application/json",
                "body_template": '{"api_key":"KEY-SECRET","api_secret":"SECRET456",'
                '"to":"33600000000","text":"{message}"}',
            },
        ),
        ("sms", {"url": "https://gw.example.com/send/APIKEY-SECRET-789/{server}"}),
    ],
)
def test_channels_hide_credentials_in_url_paths_and_body_templates(
    client: tuple[TestClient, MonitorService], kind: str, config: dict
) -> None:
    """A chat webhook keeps its token in the URL's path, an SMS gateway its key in the path or
    in the JSON body template: these were listed in clear to every API token. Only the scheme
    and host are shown now, and such a listing posted back is refused (it would store the mask)."""
    c, _ = client
    created = c.post("/api/alert-channels", json={"name": "c", "kind": kind, "config": config})
    assert created.status_code == 201, created.text
    for body in (created.text, c.get("/api/alert-channels").text):
        assert "SECRET" not in body, body
    shown = created.json()["config"]
    host = config["url"].split("/")[2]
    assert shown["url"] == f"https://{host}/********"
    assert shown.get("body_template", "********") == "********"
    again = c.post("/api/alert-channels", json={"name": "copy", "kind": kind, "config": shown})
    assert again.status_code == 422 and "mask" in again.json()["detail"]
    assert [ch["name"] for ch in c.get("/api/alert-channels").json()] == ["c"]


def test_a_channel_posted_back_with_its_masks_is_refused(
    client: tuple[TestClient, MonitorService],
) -> None:
    """A listing sent back would store the mask in place of the secret and fail at the first alert."""
    c, _ = client
    config = {"url": "https://hooks.example/alert", "headers": {"Authorization": "Bearer real"}}
    listed = c.post(
        "/api/alert-channels", json={"name": "c", "kind": "webhook", "config": config}
    ).json()
    r = c.post(
        "/api/alert-channels", json={"name": "copy", "kind": "webhook", "config": listed["config"]}
    )
    assert r.status_code == 422 and "mask" in r.json()["detail"]
    assert [ch["name"] for ch in c.get("/api/alert-channels").json()] == ["c"]


def test_alerts_list_and_acknowledge(
    client: tuple[TestClient, MonitorService], store: Store
) -> None:
    c, _ = client
    alert, _ = store.monitoring.fire_alert(
        key="probe:1",
        server="web1",
        kind="probe",
        subject="p",
        value=None,
        message="down",
        now=time.time(),
    )
    assert [a["id"] for a in c.get("/api/alerts", params={"open": True}).json()] == [alert.id]
    r = c.post(f"/api/alerts/{alert.id}/acknowledge", json={"by": "ops"})
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert c.post("/api/alerts/999/acknowledge").status_code == 404
    assert c.get("/api/alerts", params={"state": "bogus"}).status_code == 422


def test_metrics_exposition_parses_and_carries_the_figures(
    client: tuple[TestClient, MonitorService],
) -> None:
    c, monitor = client
    monitor.on_metrics(
        NODE,
        "web1",
        MetricsReport(
            at=time.time(),
            samples=(
                sample("cpu_percent", 42.5),
                sample("disk_used_percent", 61.0, path="/srv/www"),
                sample("journal_backlog", 7, mapping="site"),
            ),
        ),
    )
    text = c.get("/metrics").text
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert got[("relaysync_cpu_percent", (("server", "web1"),))] == 42.5
    assert got[("relaysync_disk_used_percent", (("path", "/srv/www"), ("server", "web1")))] == 61.0
    assert got[("relaysync_journal_backlog", (("mapping", "site"), ("server", "web1")))] == 7
    assert got[("relaysync_server_healthy", (("server", "web1"),))] == 1.0
    assert c.get("/metrics", headers={"Authorization": ""}).status_code == 401
