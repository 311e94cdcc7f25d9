"""Store statistics: figures equal to the commit reports recorded, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from relaysync.errors import ConfigError
from relaysync.master.store import Store
from relaysync.master.store._stats import day_of, weighted_percentile
from relaysync.protocol.messages import CommitRecord
from tests.unit.master._reports import SRC, T1, T2, report


@pytest.fixture
def mapping_ids(store: Store) -> tuple[int, int]:
    for node, name, region, group in (
        (SRC, "src", "eu", "g0"),
        (T1, "t1", "eu", "g1"),
        (T2, "t2", "us", "g2"),
    ):
        store.upsert_server(
            node_id=node, name=name, region=region, group=group, address=f"{name}:1"
        )
    one = store.create_mapping(
        name="one", source="src", source_path="/a", targets=[("t1", "/b"), ("t2", "/c")]
    ).id
    two = store.create_mapping(
        name="two", source="src", source_path="/d", targets=[("t1", "/e")]
    ).id
    return one, two


def rec(
    seq: int, *, size: int = 100, wire: int = 10, ms: float = 2.0, ok: bool = True
) -> CommitRecord:
    return CommitRecord(
        seq=seq,
        op="write",
        path=f"f{seq}",
        size=size,
        wire_bytes=wire,
        ok=ok,
        error="" if ok else "disk full",
        duration_ms=ms,
        committed_at=time.time(),
    )


def by_key(store: Store, by: str, **kw: float) -> dict[str, dict[str, object]]:
    from dataclasses import asdict

    return {r.key: asdict(r) for r in store.stats.stats(by=by, **kw)}


@pytest.fixture
def recorded(store: Store, mapping_ids: tuple[int, int]) -> tuple[int, int]:
    one, two = mapping_ids
    store.record_commit_reports(
        [
            report(
                one,
                T1,
                3,
                rec(1, size=100, wire=110, ms=1.0),
                rec(2, size=200, wire=210, ms=3.0),
                rec(3, size=300, wire=310, ms=5.0),
            ),
            report(
                one,
                T2,
                2,
                rec(1, size=100, wire=120, ms=10.0),
                rec(2, size=200, wire=220, ms=20.0),
                rec(3, ok=False),
            ),
            report(two, T1, 1, rec(1, size=50, wire=60, ms=7.0)),
        ]
    )
    store.record_commit_reports([report(one, T2, 2, rec(3, ok=False))])  # a retry fails again
    return one, two


def test_by_mapping_counts_files_bytes_failures_and_changes(
    store: Store, recorded: tuple[int, int]
) -> None:
    got = by_key(store, "mapping")
    assert set(got) == {"one", "two"}
    one = got["one"]
    assert (one["files"], one["wire_bytes"]) == (5, 110 + 210 + 310 + 120 + 220)
    assert (one["failures"], one["failed_attempts"], one["open_failures"]) == (1, 2, 1)
    assert (one["changes"], one["change_bytes"]) == (3, 600)
    two = got["two"]
    assert (
        two["files"],
        two["wire_bytes"],
        two["failures"],
        two["changes"],
        two["change_bytes"],
    ) == (1, 60, 0, 1, 50)
    assert two["file_ms_p50"] == two["file_ms_p99"] == 7.0


def test_by_server_group_and_region_follow_the_target(
    store: Store, recorded: tuple[int, int]
) -> None:
    servers = by_key(store, "server")
    assert {k: (v["files"], v["wire_bytes"], v["failures"]) for k, v in servers.items()} == {
        "t1": (4, 110 + 210 + 310 + 60, 0),
        "t2": (2, 340, 1),
    }
    assert servers["t1"]["changes"] is None  # changes belong to sources, not to targets
    assert {k: v["files"] for k, v in by_key(store, "group").items()} == {"g1": 4, "g2": 2}
    assert {k: v["wire_bytes"] for k, v in by_key(store, "region").items()} == {
        "eu": 690,
        "us": 340,
    }


def test_latency_percentiles_are_per_file_transfer_times(
    store: Store, recorded: tuple[int, int]
) -> None:
    t2 = by_key(store, "server")["t2"]
    # t2 committed two files in one report taking 30 ms in all: 15 ms per file
    assert t2["file_ms_p50"] == t2["file_ms_p99"] == 15.0
    t1 = by_key(store, "server")["t1"]
    # t1: three files at 3 ms each (9 ms / 3) and one at 7 ms
    assert (t1["file_ms_p50"], t1["file_ms_p95"]) == (3.0, 7.0)


def test_by_day_and_since_until(store: Store, recorded: tuple[int, int]) -> None:
    today = day_of(time.time())
    got = by_key(store, "day")
    assert list(got) == [today]
    assert (got[today]["files"], got[today]["changes"], got[today]["failures"]) == (6, 4, 1)
    assert by_key(store, "mapping", since=time.time() + 60) == {}
    assert by_key(store, "mapping", until=time.time() - 3600) == {}


def test_empty_store_and_bad_grouping(store: Store) -> None:
    assert store.stats.stats(by="mapping") == []
    with pytest.raises(ConfigError):
        store.stats.stats(by="planet")


def test_weighted_percentile() -> None:
    assert weighted_percentile([], 50) is None
    assert weighted_percentile([(1.0, 1), (2.0, 1), (10.0, 2)], 50) == 2.0
    assert weighted_percentile([(1.0, 1), (2.0, 1), (10.0, 2)], 75) == 10.0
    assert weighted_percentile([(5.0, 0), (3.0, 1)], 99) == 3.0


def test_latency_is_commit_time_minus_change_time_and_kept_apart_from_transfer_time(
    store: Store, mapping_ids: tuple[int, int]
) -> None:
    one, two = mapping_ids
    now = time.time()

    def timed(seq: int, latency_s: float, ms: float) -> CommitRecord:
        return CommitRecord(
            seq=seq,
            op="write",
            path=f"f{seq}",
            size=1,
            wire_bytes=1,
            duration_ms=ms,
            committed_at=now,
            changed_at=now - latency_s,
        )

    store.record_commit_reports(
        [
            report(
                one, T1, 2, timed(1, 0.5, 2.0), timed(2, 1.5, 4.0)
            ),  # mean 1000 ms over two files
            report(one, T2, 1, timed(1, 0.25, 1.0)),
            # catch-up work and old agents carry no change time: no latency, transfer time still counts
            report(two, T1, 1, rec(0, ms=8.0), rec(1, ms=8.0)),
        ]
    )
    servers = by_key(store, "server")
    assert (servers["t1"]["latency_ms_p50"], servers["t1"]["latency_ms_p99"]) == (1000.0, 1000.0)
    assert servers["t1"]["file_ms_p50"] == 3.0  # transfer time, as before: 6 ms / 2 files
    assert servers["t2"]["latency_ms_p50"] == 250.0
    mappings = by_key(store, "mapping")
    assert (mappings["one"]["latency_ms_p50"], mappings["one"]["latency_ms_p95"]) == (
        1000.0,
        1000.0,
    )
    assert mappings["two"]["latency_ms_p50"] is None and mappings["two"]["file_ms_p50"] == 8.0
    with store._read("changed_at") as session:
        from sqlalchemy import select

        from relaysync.master.store._joblog_changes import CHANGES

        times = dict(
            session.execute(
                select(CHANGES.c.seq, CHANGES.c.changed_at).where(CHANGES.c.mapping_id == one)
            ).all()
        )
    assert times == {1: pytest.approx(now - 0.5), 2: pytest.approx(now - 1.5)}


def test_a_target_clock_behind_the_source_counts_as_zero_latency(
    store: Store, mapping_ids: tuple[int, int]
) -> None:
    one, _ = mapping_ids
    skewed = CommitRecord(seq=1, op="write", path="f", committed_at=1000.0, changed_at=1002.0)
    store.record_commit_reports([report(one, T1, 1, skewed)])
    assert by_key(store, "server")["t1"]["latency_ms_p50"] == 0.0
