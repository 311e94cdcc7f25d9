"""The store's monitoring tables on SQLite and PostgreSQL: figures, retention, rules, alert log."""

from __future__ import annotations

import pytest

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import Store
from relaysync.monitor.collectors import sample

A = "a" * 64


def _server(store: Store, name: str = "web1", group: str = "g1") -> None:
    store.upsert_server(node_id=A, name=name, region="r", group=group, address="127.0.0.1:1")


def test_samples_downsample_to_minute_averages_and_expire(store: Store) -> None:
    day, month = 86_400.0, 30 * 86_400.0
    now = 10 * month
    old = now - day - 600  # older than a day: folded into minute averages
    batch = [
        (
            "web1",
            old + i,
            [sample("cpu_percent", float(i)), sample("disk_used_percent", 50, path="/d")],
        )
        for i in range(0, 60)
    ]  # one minute of raw figures (old is minute-aligned below)
    batch += [("web1", now - 5, [sample("cpu_percent", 99.0)])]  # fresh: stays raw
    batch += [("web1", now - month - 3600, [sample("cpu_percent", 7.0)])]  # older than a month
    assert store.monitoring.add_samples(batch) == 122
    folded, dropped = store.monitoring.downsample(
        now=now, raw_retention_s=day, minute_retention_s=month
    )
    assert folded == 121
    assert dropped == 1  # the month-old one became an average in this call and then expired
    cpu = store.monitoring.samples(server="web1", name="cpu_percent")
    minutes = [s for s in cpu if s.resolution_s == 60]
    raw = [s for s in cpu if s.resolution_s == 0]
    assert [s.value for s in raw] == [99.0]
    assert 1 <= len(minutes) <= 2  # 60 s of raw figures may straddle a minute edge
    assert all(m.at % 60 == 0 for m in minutes)
    disk = store.monitoring.samples(server="web1", name="disk_used_percent")
    assert {s.labels for s in disk} == {(("path", "/d"),)} and all(s.value == 50 for s in disk)
    assert store.monitoring.downsample(now=now, raw_retention_s=day, minute_retention_s=month) == (
        0,
        0,
    )


def test_minute_average_is_the_mean(store: Store) -> None:
    base = 6000.0  # minute-aligned
    store.monitoring.add_samples(
        [("s", base + i, [sample("load1", float(v))]) for i, v in enumerate([1, 2, 3, 6])]
    )
    store.monitoring.downsample(now=base + 10_000, raw_retention_s=100, minute_retention_s=1e9)
    [m] = store.monitoring.samples(server="s", name="load1")
    assert (m.value, m.at, m.resolution_s) == (3.0, base, 60)


def test_thresholds_validate(store: Store) -> None:
    _server(store)
    t = store.monitoring.create_threshold(
        scope="server",
        target="web1",
        metric="cpu_percent",
        operator=">",
        value=90,
        for_s=5,
        hysteresis=10,
    )
    assert store.monitoring.list_thresholds() == [t]
    with pytest.raises(ConfigError, match="operator"):
        store.monitoring.create_threshold(scope="all", metric="x", operator="~", value=1)
    with pytest.raises(ConfigError, match="scope"):
        store.monitoring.create_threshold(scope="planet", metric="x", operator=">", value=1)
    with pytest.raises(ConfigError, match="target"):
        store.monitoring.create_threshold(scope="group", metric="x", operator=">", value=1)
    with pytest.raises(NotFound):
        store.monitoring.create_threshold(
            scope="server", target="nope", metric="x", operator=">", value=1
        )
    with pytest.raises(ConfigError, match="for_s"):
        store.monitoring.create_threshold(scope="all", metric="x", operator=">", value=1, for_s=-1)
    store.monitoring.delete_threshold(t.id)
    assert store.monitoring.list_thresholds() == []
    with pytest.raises(NotFound):
        store.monitoring.delete_threshold(t.id)


def test_probes_and_channels(store: Store) -> None:
    _server(store)
    p = store.monitoring.create_probe(
        name="web", kind="tcp", host="127.0.0.1", port=80, server="web1"
    )
    with pytest.raises(ConfigError, match="exists"):
        store.monitoring.create_probe(name="web", kind="ping", host="127.0.0.1")
    with pytest.raises(ConfigError, match="port"):
        store.monitoring.create_probe(name="x", kind="tcp", host="127.0.0.1", port=0)
    with pytest.raises(NotFound):
        store.monitoring.create_probe(name="y", kind="ping", host="h", server="nope")
    assert store.monitoring.list_probes() == [p]
    c = store.monitoring.create_channel(name="ops", kind="webhook", config={"url": "http://x/"})
    assert store.monitoring.list_channels()[0].config == {"url": "http://x/"}
    with pytest.raises(ConfigError):
        store.monitoring.create_channel(name="ops", kind="webhook", config={})
    store.monitoring.delete_channel(c.id)
    store.monitoring.delete_probe(p.id)
    assert store.monitoring.list_channels() == [] and store.monitoring.list_probes() == []


def test_alert_log_fire_ack_resolve_no_duplicate(store: Store) -> None:
    a, new = store.monitoring.fire_alert(
        key="probe:1",
        server="web1",
        kind="probe",
        subject="web",
        value=None,
        message="down",
        now=1.0,
    )
    assert new and a.state == "firing"
    again, new = store.monitoring.fire_alert(
        key="probe:1",
        server="web1",
        kind="probe",
        subject="web",
        value=None,
        message="down",
        now=2.0,
    )
    assert not new and again.id == a.id
    acked = store.monitoring.acknowledge_alert(a.id, by="ops", now=3.0)
    assert (acked.state, acked.acknowledged_by, acked.acknowledged_at) == (
        "acknowledged",
        "ops",
        3.0,
    )
    assert [x.id for x in store.monitoring.list_alerts(open_only=True)] == [a.id]
    done = store.monitoring.resolve_alert("probe:1", now=4.0)
    assert done is not None and done.state == "resolved" and done.resolved_at == 4.0
    assert store.monitoring.resolve_alert("probe:1", now=5.0) is None
    with pytest.raises(ConfigError, match="resolved"):
        store.monitoring.acknowledge_alert(a.id, by="ops", now=6.0)
    b, new = store.monitoring.fire_alert(
        key="probe:1",
        server="web1",
        kind="probe",
        subject="web",
        value=None,
        message="down",
        now=7.0,
    )
    assert new and b.id != a.id
    assert [x.id for x in store.monitoring.list_alerts()] == [b.id, a.id]
    assert [x.id for x in store.monitoring.list_alerts(state="resolved")] == [a.id]
    with pytest.raises(NotFound):
        store.monitoring.acknowledge_alert(999, by="x", now=1)


def test_health_on_servers(store: Store) -> None:
    _server(store)
    assert store.get_server("web1").health == "ok"
    assert store.monitoring.set_health("web1", "unhealthy")
    assert not store.monitoring.set_health("web1", "unhealthy")
    assert store.get_server("web1").health == "unhealthy"
    assert not store.monitoring.set_health("nope", "ok")
    with pytest.raises(ConfigError):
        store.monitoring.set_health("web1", "sick")
