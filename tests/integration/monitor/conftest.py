"""A monitored fleet: a master that checks every 0.3 s, two agents that report every 0.3 s and
serve their own /metrics, and real receivers (SMTP with STARTTLS + AUTH LOGIN, HTTP) behind
every kind of alert channel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

from relaysync.testing.cluster import Cluster, wait_until
from tests._monitor_receivers import (
    Mailbox,
    Recorded,
    email_config,
    free_port,
    http_receiver,
    smtp_server,
)

INTERVAL_S = 0.3
ALERT_TIMEOUT_S = 30.0
SMS_TEMPLATE = '{"to": "+15550100", "text": "{state} {server} {metric} {value}"}'


@dataclass
class MonitoredFleet:
    cluster: Cluster
    metrics_ports: dict[str, int]
    hooks: list[Recorded]
    sms: list[Recorded]
    mailbox: Mailbox

    def alerts(self, **params: Any) -> list[dict[str, Any]]:
        r = self.cluster.api.get("/api/alerts", params=params)
        r.raise_for_status()
        return list(r.json())

    def wait_alert(
        self, key: str, state: str, timeout_s: float = ALERT_TIMEOUT_S
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for a in self.alerts(limit=1000):
                if a["key"] == key and a["state"] == state:
                    return a
            return None

        return dict(
            wait_until(found, timeout_s=timeout_s, interval_s=0.1, what=f"alert {key} {state}")
        )

    def webhook_notices(self, alert_id: int) -> list[str]:
        return [
            json.loads(r.body)["state"]
            for r in list(self.hooks)
            if r.path == "/hook" and json.loads(r.body)["alert_id"] == alert_id
        ]

    def sms_notices(self, server: str) -> list[str]:
        return [r.body.decode() for r in list(self.sms) if server in r.body.decode()]

    def health(self, name: str) -> str:
        return str(self.cluster.api.get(f"/api/servers/{name}").json()["health"])


@pytest.fixture(scope="module")
def mfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitoredFleet]:
    ca = trustme.CA()
    base = tmp_path_factory.mktemp("monitored")
    env = {
        "RELAYSYNC_MONITOR_INTERVAL_S": str(INTERVAL_S),
        "RELAYSYNC_METRICS_INTERVAL_S": str(INTERVAL_S),
    }
    cluster = Cluster(base / "fleet", extra_env=env)
    with smtp_server(ca) as (box, smtp_port), http_receiver() as (log, url):
        try:
            cluster.start_master()
            ports = {}
            for name in ("a1", "a2"):
                ports[name] = free_port()
                cluster.start_agent(
                    name, group="g1", extra_args=["--metrics-listen", f"127.0.0.1:{ports[name]}"]
                )
            _channels(cluster, url, smtp_port, ca)
            yield MonitoredFleet(cluster, ports, log, log, box)
        finally:
            cluster.stop()


def _channels(cluster: Cluster, url: str, smtp_port: int, ca: trustme.CA) -> None:
    channels = [
        {"name": "hook", "kind": "webhook", "config": {"url": url + "/hook"}},
        {
            "name": "sms",
            "kind": "sms",
            "config": {
                "url": url + "/sms?srv={server}",
                "method": "POST",
                "body_template": SMS_TEMPLATE,
            },
        },
        {
            "name": "mail",
            "kind": "email",
            "config": email_config(ca, smtp_port),
        },
        {"name": "console", "kind": "console", "config": {}},
    ]
    for body in channels:
        r = cluster.api.post("/api/alert-channels", json=body)
        assert r.status_code == 201, r.text
    listed = cluster.api.get("/api/alert-channels").json()
    assert {c["name"] for c in listed} == {"hook", "sms", "mail", "console"}
    assert next(c for c in listed if c["name"] == "mail")["config"]["password"] == "********"
