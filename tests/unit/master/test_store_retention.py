"""Job-log and alert retention on SQLite and PostgreSQL: settings, and pruning by age with fake times."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from relaysync.errors import ConfigError
from relaysync.master.store import Store, _joblog
from relaysync.master.store._engine import make_engine
from relaysync.master.store._retention import DAY_S, DEFAULT_DAYS, MAX_DAYS
from relaysync.protocol.messages import CommitRecord, CommitReport
from tests.unit.master.test_store_ids import _migrate_to

SRC, T1, T2 = "a" * 64, "b" * 64, "c" * 64
BASE = 1_700_000_000.0  # the fake "now" every row is written at, plus some days


def rec(seq: int, *, ok: bool = True) -> CommitRecord:
    return CommitRecord(
        seq=seq,
        op="write",
        path=f"f{seq}",
        size=10,
        wire_bytes=10,
        ok=ok,
        error="" if ok else "disk full",
        duration_ms=1.0,
        committed_at=BASE,
    )


def record_at(
    store: Store, at: float, mid: int, target: str, watermark: int, *records: CommitRecord
) -> None:
    report = CommitReport(
        mapping_id=mid, source_node=SRC, target_node=target, watermark=watermark, records=records
    )
    with store._write("test report") as session:
        _joblog.record(session, [report], at)


def count(store: Store, table: str, *where: object) -> int:
    t = store_table(table)
    with store._read("count") as session:
        return int(session.scalar(select(func.count()).select_from(t).where(*where)) or 0)


def store_table(name: str):  # type: ignore[no-untyped-def]
    from relaysync.master.store.models import Base

    return Base.metadata.tables[name]


@pytest.fixture
def history(store: Store) -> tuple[int, int, int]:
    """Two mappings' job log written over 50 fake days; returns (mapping one, two, running job id)."""
    for node, name in ((SRC, "src"), (T1, "t1"), (T2, "t2")):
        store.upsert_server(node_id=node, name=name, region="", group="", address=f"{name}:1")
    one = store.create_mapping(
        name="one", source="src", source_path="/a", targets=[("t1", "/b"), ("t2", "/c")]
    ).id
    two = store.create_mapping(
        name="two", source="src", source_path="/d", targets=[("t1", "/e")]
    ).id
    record_at(store, BASE, one, T1, 3, rec(1), rec(2), rec(3))
    record_at(store, BASE, one, T2, 1, rec(1), rec(2, ok=False), rec(3, ok=False))  # two exceptions
    record_at(
        store, BASE + 10 * DAY_S, one, T2, 2, rec(2)
    )  # resolves the first, the other stays open
    record_at(store, BASE + 50 * DAY_S, one, T1, 4, rec(4))
    record_at(store, BASE, two, T1, 1, rec(1))  # mapping two's only change: never pruned
    done = store.routing.start_recovery(one, T2, "at_once", BASE)
    store.routing.finish_recovery(done.id, "done", BASE + DAY_S)
    running = store.routing.start_recovery(two, T1, "manual", BASE)
    return one, two, running.id


def test_fresh_store_has_the_defaults(store: Store) -> None:
    got = store.retention.get()
    assert {k: got.days(k) for k in DEFAULT_DAYS} == {
        "changes": 30,
        "advances": 90,
        "exceptions": 90,
        "recovery_jobs": 90,
        "alerts": 90,
    }
    assert got.updated_at is None and got.last_pruned_at is None and got.last_pruned == {}


def test_set_changes_only_the_kinds_given(store: Store) -> None:
    store.retention.set({"changes": 7})
    got = store.retention.set({"advances": 0})
    assert (got.changes_days, got.advances_days, got.exceptions_days) == (7, 0, 90)
    assert store.retention.get() == got and got.updated_at is not None


@pytest.mark.parametrize(
    "bad",
    [
        {"changes": -1},
        {"changes": MAX_DAYS + 1},
        {"changes": 1.5},
        {"changes": True},
        {"changes": "7"},
        {"metrics": 3},
    ],
)
def test_bad_settings_change_nothing(store: Store, bad: dict[str, object]) -> None:
    store.retention.set({"advances": 5})
    with pytest.raises(ConfigError):
        store.retention.set({"advances": 6, **bad})
    assert store.retention.get().advances_days == 5


def test_prune_by_age_keeps_open_exceptions_running_jobs_watermarks_and_each_newest_change(
    store: Store, history: tuple[int, int, int]
) -> None:
    one, two, running = history
    assert count(store, "changes") == 5 and count(store, "watermark_advances") == 5
    # Day 45: change rows older than 30 days go (seqs 1-3 of mapping one); the rest is younger
    # than its limit. Two rows per batch: the three rows take two batches.
    deleted = store.retention.prune(BASE + 45 * DAY_S, batch_rows=2)
    assert deleted == {
        "changes": 3,
        "advances": 0,
        "exceptions": 0,
        "recovery_jobs": 0,
        "alerts": 0,
    }
    changes = store_table("changes").c
    with store._read("left") as session:
        left = sorted(session.execute(select(changes.mapping_id, changes.seq)).all())
    assert left == [(one, 4), (two, 1)]  # mapping two's only change is its newest: kept however old

    # Day 200: advances (90 days), the resolved exception and the finished recovery job go.
    deleted = store.retention.prune(BASE + 200 * DAY_S, batch_rows=2)
    assert deleted == {
        "changes": 0,
        "advances": 5,
        "exceptions": 1,
        "recovery_jobs": 1,
        "alerts": 0,
    }
    exc = store_table("exceptions").c
    assert count(store, "exceptions") == count(store, "exceptions", exc.resolved_at.is_(None)) == 1
    assert [j.id for j in store.routing.running_recoveries()] == [running]
    assert {(w.target, w.seq) for w in store.watermarks(one)} == {(T1, 4), (T2, 2)}
    # the newest change row is where the head comes from: the lag stays right after a prune
    assert {(s.target, s.highest_seq, s.lag) for s in store.mapping_status(one)} == {
        (T1, 4, 0),
        (T2, 4, 2),
    }
    got = store.retention.get()
    assert got.last_pruned_at == BASE + 200 * DAY_S and got.last_pruned["advances"] == 5


def test_zero_days_keeps_forever(store: Store, history: tuple[int, int, int]) -> None:
    store.retention.set(dict.fromkeys(DEFAULT_DAYS, 0))
    assert store.retention.prune(BASE + 10_000 * DAY_S) == dict.fromkeys(DEFAULT_DAYS, 0)
    assert count(store, "changes") == 5 and count(store, "watermark_advances") == 5


def test_prune_batch_deletes_at_most_its_limit(store: Store, history: tuple[int, int, int]) -> None:
    cutoff = BASE + 100 * DAY_S
    assert store.retention.prune_batch("advances", cutoff, 3) == 3
    assert store.retention.prune_batch("advances", cutoff, 3) == 2
    assert store.retention.prune_batch("advances", cutoff, 3) == 0


def _alerts_at(store: Store) -> dict[str, str]:
    """Alerts of every state, the oldest BASE: key -> state."""
    m = store.monitoring
    for key, fired_days, resolved_days in [
        ("old-resolved", 0, 1),  # resolved on day 1
        ("young-resolved", 0, 95),  # fired long ago, resolved on day 95
        ("old-firing", 0, None),
        ("old-acknowledged", 0, None),
    ]:
        alert, _ = m.fire_alert(
            key=key,
            server="web1",
            kind="probe",
            subject=key,
            value=None,
            message="",
            now=BASE + fired_days * DAY_S,
        )
        if resolved_days is not None:
            m.resolve_alert(key, now=BASE + resolved_days * DAY_S)
        if key == "old-acknowledged":
            m.acknowledge_alert(alert.id, by="ops", now=BASE + DAY_S)
    return {a.key: a.state for a in m.list_alerts(limit=100)}


def test_resolved_alerts_age_out_and_open_ones_stay_however_old(store: Store) -> None:
    """The alert log had no retention: every fire and resolve of every key stayed for ever. Now
    a resolved alert goes `alerts_days` (90) after it resolved; a firing or acknowledged one is
    kept however old, and 0 keeps them all."""
    assert _alerts_at(store) == {
        "old-resolved": "resolved",
        "young-resolved": "resolved",
        "old-firing": "firing",
        "old-acknowledged": "acknowledged",
    }
    store.retention.set({"alerts": 0})
    assert store.retention.prune(BASE + 500 * DAY_S)["alerts"] == 0
    store.retention.set({"alerts": 90})
    deleted = store.retention.prune(BASE + 150 * DAY_S, batch_rows=1)
    assert deleted["alerts"] == 1
    left = {a.key: a.state for a in store.monitoring.list_alerts(limit=100)}
    assert left == {
        "young-resolved": "resolved",  # 55 days after it resolved
        "old-firing": "firing",
        "old-acknowledged": "acknowledged",
    }
    assert store.retention.get().last_pruned["alerts"] == 1


def test_the_alert_retention_migration_keeps_settings_both_ways(empty_store_url: str) -> None:
    """Settings saved before 0025_alert_retention keep their days and get the alerts' default;
    the downgrade drops the column and keeps the row."""
    retention = sa.table("retention", *(sa.column(c) for c in ("changes_days", "advances_days")))
    _migrate_to(empty_store_url, "0024_journal_ids")
    engine = make_engine(empty_store_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO retention (id, changes_days, advances_days, exceptions_days,"
                    " recovery_jobs_days, updated_at, last_pruned) VALUES (1, 7, 8, 9, 10, 0, '{}')"
                )
            )
        _migrate_to(empty_store_url, "0025_alert_retention")
        store = Store(empty_store_url)
        try:
            got = store.retention.get()
        finally:
            store.close()
        assert (got.changes_days, got.recovery_jobs_days, got.alerts_days) == (7, 10, 90)
        _migrate_to(empty_store_url, "0024_journal_ids", down=True)
        with engine.connect() as conn:
            assert conn.execute(sa.select(retention)).all() == [(7, 8)]
    finally:
        engine.dispose()
