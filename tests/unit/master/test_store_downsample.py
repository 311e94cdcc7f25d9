"""Downsampling of the monitor's figures on SQLite and PostgreSQL: the averages, the batches."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from relaysync.master.store import Store, _engine
from relaysync.master.store._downsample import DOWNSAMPLE_BATCH_ROWS, SAMPLES, downsample
from relaysync.master.store._monitoring import MonitoringStore
from relaysync.master.store._monitoring_rows import _labels_key
from relaysync.monitor.collectors import sample
from relaysync.protocol.messages import MetricSample

DAY_S = 86_400.0
NOW = 1_700_000_040.0  # minute-aligned; the cutoff a day before is too
Batch = list[tuple[str, float, list[MetricSample]]]


def _figures(servers: int, reports: int, *, seed: int = 1) -> Batch:
    """Reports every 7 s (minutes of 8 or 9 reports) of random values, older than a day, plus
    fresh ones that stay raw and one in the cutoff's minute."""
    rnd = random.Random(seed)
    start = NOW - DAY_S - reports * 7.0
    batch: Batch = [
        (
            f"web{s}",
            start + i * 7.0 + s * 0.01,
            [
                sample("cpu_percent", rnd.uniform(0, 100)),
                sample("disk_used_percent", rnd.random() * 1e3, path="/d"),
                sample("disk_used_percent", rnd.random() / 3, path="/e"),
            ],
        )
        for i in range(reports)
        for s in range(servers)
    ]
    batch.append(("web0", NOW - DAY_S - 0.5, [sample("cpu_percent", rnd.random())]))
    batch.append(("web0", NOW - 5.0, [sample("cpu_percent", 1.0)]))  # fresh: stays raw
    return batch


def _old_fold(batch: Batch, cutoff: float) -> list[tuple[str, str, str, float, float]]:
    """The averages as the one-transaction fold made them: each series' raw figures of each
    minute before `cutoff`, summed in the order they were written."""
    groups: dict[tuple[str, str, str, float], list[float]] = {}
    for server, at, samples in batch:
        if at < cutoff:
            for s in samples:
                key = (server, s.name, _labels_key(s.labels), float(int(at // 60) * 60))
                groups.setdefault(key, []).append(s.value)
    return sorted((*k, sum(v) / len(v)) for k, v in groups.items())


def _rows(store: Store, resolution_s: int) -> list[tuple[str, str, str, float, float]]:
    c = SAMPLES.c
    with store._read("test") as session:
        return sorted(
            (r.server, r.name, r.labels, r.at, r.value)
            for r in session.execute(
                select(c.server, c.name, c.labels, c.at, c.value).where(
                    c.resolution_s == resolution_s
                )
            )
        )


def _raw_count(store: Store) -> int:
    with store._read("test") as session:
        return int(session.scalar(select(func.count()).where(SAMPLES.c.resolution_s == 0)) or 0)


@pytest.mark.parametrize("batch_rows", [7, 40, 100_000])
def test_the_averages_are_those_of_the_single_transaction_fold(
    store: Store, batch_rows: int
) -> None:
    """Batches hold whole minutes of each series (7 rows: a minute split by server, one
    server's minute alone when it holds more), so the averages are the same, to the bit."""
    batch = _figures(servers=4, reports=40)
    store.monitoring.add_samples(batch)
    folded, dropped = downsample(
        store._write,
        now=NOW,
        raw_retention_s=DAY_S,
        minute_retention_s=30 * DAY_S,
        batch_rows=batch_rows,
    )
    expected = _old_fold(batch, NOW - DAY_S)
    assert (folded, dropped) == (4 * 40 * 3 + 1, 0)
    assert _rows(store, 60) == expected
    assert _rows(store, 0) == [("web0", "cpu_percent", "", NOW - 5.0, 1.0)]


def test_a_downsample_holds_the_write_lock_for_one_batch_at_a_time(store: Store) -> None:
    """Was: every raw figure folded in one transaction (up to 50,000 rows), and in quadratic
    time (the ORM checked each loaded row against the delete's IN list): 24,000 rows held
    SQLite's write lock 28 s, and the control links' writes failed after the 10 s busy timeout.
    Now no transaction folds more than DOWNSAMPLE_BATCH_ROWS, and a writer gets in between."""
    store.upsert_server(node_id="a" * 64, name="web0", region="r", group="g", address="w:1")
    batch = _figures(servers=100, reports=2 * DOWNSAMPLE_BATCH_ROWS // 300 + 30)
    store.monitoring.add_samples(batch)
    total = _raw_count(store) - 1  # the fresh one stays
    per_transaction: list[int] = []

    @contextmanager
    def counted(operation: str) -> Iterator[Session]:
        before = _raw_count(store)
        with store._write(operation) as session:
            yield session
        per_transaction.append(before - _raw_count(store))

    written: list[bool] = []
    folded, _ = MonitoringStore(store._read, counted).downsample(
        now=NOW,
        raw_retention_s=DAY_S,
        minute_retention_s=30 * DAY_S,
        between=lambda: written.append(store.set_server_state("a" * 64, "up", NOW)),
    )
    assert folded == total > 2 * DOWNSAMPLE_BATCH_ROWS
    assert sum(per_transaction) == total
    assert max(per_transaction) <= DOWNSAMPLE_BATCH_ROWS
    assert len(written) == len(per_transaction) >= 3  # a write before each batch


def test_a_downsample_stopped_between_batches_loses_no_figure(store: Store) -> None:
    """Stopped (the monitor cancelled) after a batch: what it folded is kept, the rest stays
    raw, and the next run folds that into the same averages."""
    batch = _figures(servers=3, reports=30)
    store.monitoring.add_samples(batch)
    calls: list[int] = []

    def stop_at_the_second() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        downsample(
            store._write,
            now=NOW,
            raw_retention_s=DAY_S,
            minute_retention_s=30 * DAY_S,
            batch_rows=50,
            between=stop_at_the_second,
        )
    assert 0 < len(batch) * 3 - _raw_count(store) <= 50
    downsample(store._write, now=NOW, raw_retention_s=DAY_S, minute_retention_s=30 * DAY_S)
    assert _rows(store, 60) == _old_fold(batch, NOW - DAY_S)


def test_a_writer_gets_the_store_while_a_long_downsample_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite, a busy timeout cut to 2 s: the control links' writes go on, one after another,
    while a downsample of ~19,000 rows runs in another thread (before, they failed with
    StoreError behind its one transaction, of 10 s for that many rows)."""
    monkeypatch.setattr(_engine, "SQLITE_BUSY_TIMEOUT_MS", 2_000)
    store = Store(f"sqlite:///{tmp_path / 'master.db'}")
    try:
        store.migrate()
        store.upsert_server(node_id="a" * 64, name="web0", region="r", group="g", address="w:1")
        store.monitoring.add_samples(_figures(servers=100, reports=63))
        run = threading.Thread(
            target=store.monitoring.downsample,
            kwargs={"now": NOW, "raw_retention_s": DAY_S, "minute_retention_s": 30 * DAY_S},
        )
        run.start()
        writes = 0
        try:
            while run.is_alive():
                store.set_server_state("a" * 64, "up", NOW)  # StoreError if locked out for 2 s
                writes += 1
        finally:
            run.join()
        assert writes >= 2 and _raw_count(store) == 1
    finally:
        store.close()
