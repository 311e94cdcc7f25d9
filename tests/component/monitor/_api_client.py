"""The master's REST app over a real store with a monitor attached, as the monitoring API tests use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from relaysync.auth.ca import CertificateAuthority
from relaysync.master.app import create_app
from relaysync.master.events import EventBus
from relaysync.master.store import Store
from relaysync.monitor.collectors import sample
from relaysync.monitor.engine import MonitorService

ADMIN = "admin-secret"


@contextmanager
def monitored_api(
    store: Store, tmp_path: Path, **monitor_options: Any
) -> Iterator[tuple[TestClient, MonitorService]]:
    """A TestClient of the master's app (admin token set) and the MonitorService it serves;
    `monitor_options` go to MonitorService (e.g. interval_s)."""
    app = create_app(
        store=store,
        ca=CertificateAuthority.load_or_create(tmp_path / "ca"),
        events=EventBus(),
        admin_token=ADMIN,
        control_address="127.0.0.1:7000",
        on_change=lambda: None,
    )
    monitor = MonitorService(
        store=store,
        publish=lambda kind, data: None,
        links_up=set,
        self_figures=lambda: [sample("process_rss_bytes", 123)],
        **monitor_options,
    )
    app.state.monitor = monitor
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c, monitor
