"""A rule created after another was deleted starts afresh: the monitor keys its state (conditions,
open alerts, probe results) by rule id, so the store must never give it the deleted rule's id."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient
from tests.component.monitor._api_client import monitored_api

from relaysync.master.store import Store
from relaysync.monitor.engine import MonitorService

INTERVAL_S = 0.1
WAIT_S = 20.0


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[tuple[TestClient, MonitorService]]:
    with monitored_api(store, tmp_path, interval_s=INTERVAL_S) as pair:
        yield pair


def _run_until(monitor: MonitorService, done: Callable[[], bool]) -> None:
    """Run the monitor until `done()` holds (or fail after WAIT_S), then stop it."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            with anyio.fail_after(WAIT_S):
                while not done():
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed: connects are refused


def test_a_new_probe_does_not_show_a_deleted_probes_result(
    client: tuple[TestClient, MonitorService],
) -> None:
    c, monitor = client
    old = c.post(
        "/api/probes",
        json={"name": "old", "kind": "tcp", "host": "127.0.0.1", "port": _closed_port()},
    ).json()
    _run_until(monitor, lambda: old["id"] in monitor.probe_results)
    assert c.get("/api/probes").json()[0]["last"]["ok"] is False
    assert c.delete(f"/api/probes/{old['id']}").status_code == 204

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        new = c.post(
            "/api/probes",
            json={
                "name": "new",
                "kind": "tcp",
                "host": "127.0.0.1",
                "port": listener.getsockname()[1],
            },
        ).json()
        assert new["last"] is None  # never run yet: not the old probe's failure
        assert new["id"] != old["id"]
        _run_until(monitor, lambda: new["id"] in monitor.probe_results)
    assert [(p["name"], p["last"]["ok"]) for p in c.get("/api/probes").json()] == [("new", True)]


def test_a_new_threshold_fires_its_own_alert_not_a_deleted_ones(
    client: tuple[TestClient, MonitorService],
) -> None:
    """Replacing a firing threshold between two ticks: the old rule's alert resolves and the new
    rule, breached as well, fires an alert of its own."""
    c, monitor = client

    def open_alerts() -> list[str]:
        return [a["message"] for a in c.get("/api/alerts", params={"open": True}).json()]

    rule = {"scope": "server", "target": "master", "metric": "process_rss_bytes"}
    old = c.post("/api/thresholds", json={**rule, "operator": ">", "value": 100}).json()
    _run_until(monitor, lambda: bool(open_alerts()))
    assert open_alerts() == ["process_rss_bytes > 100 on master"]

    assert c.delete(f"/api/thresholds/{old['id']}").status_code == 204
    new = c.post("/api/thresholds", json={**rule, "operator": ">=", "value": 120}).json()
    _run_until(monitor, lambda: monitor.ticks >= 3)
    assert open_alerts() == ["process_rss_bytes >= 120 on master"]
    states = [(a["message"], a["state"]) for a in c.get("/api/alerts").json()]
    assert ("process_rss_bytes > 100 on master", "resolved") in states
    assert new["id"] != old["id"]
