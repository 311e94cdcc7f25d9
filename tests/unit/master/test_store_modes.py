"""Transmission modes: schedules, release counters, missed runs once, on SQLite and PostgreSQL."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from relaysync.errors import ConfigError
from relaysync.master.store import Store
from relaysync.master.store._modes import next_run


def test_next_run_for_each_schedule_kind() -> None:
    t0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC).timestamp()
    assert next_run("every:30", t0) == t0 + 30
    assert next_run("cron:*/15 * * * *", t0 + 1) == t0 + 15 * 60
    assert next_run("at:2026-11-23T11:00:00+00:00", t0) == t0 + 3600
    assert next_run("at:2026-11-23T09:00:00+00:00", t0) is None  # already past: no run
    for bad in ("every:0", "every:x", "cron:61 * * * *", "soon", "at:yesterday"):
        with pytest.raises(ConfigError):
            next_run(bad, t0)


@pytest.fixture
def mapped(store: Store) -> tuple[Store, int]:
    for name in ("src", "t1"):
        store.upsert_server(node_id=name * 8, name=name, region="r", group="g", address=f"{name}:1")
    m = store.create_mapping(name="m", source="src", source_path="/a", targets=[("t1", "/b")])
    return store, m.id


def test_release_counter_reaches_the_assignment(mapped: tuple[Store, int]) -> None:
    store, mapping_id = mapped
    store.modes.set_mode(mapping_id, "manual")
    assert store.modes.release(mapping_id).release == 1
    (spec,) = store.assignment_for("srcsrcsrcsrcsrcsrcsrcsrc").mappings
    assert (spec.mode, spec.release) == ("manual", 1)
    store.modes.record_release(mapping_id, 1, 42)
    store.modes.record_release(mapping_id, 0, 99)  # a stale report changes nothing
    assert store.modes.get(mapping_id).released_upto == 42


def test_a_release_is_known_taken_even_when_its_seq_did_not_move(
    mapped: tuple[Store, int],
) -> None:
    """`released_upto` kept the previous release's seq until the source reported the new one,
    and a report covering the same seq changed nothing: `relaysync send` took the old seq, held
    by every target, for the new release done (with the source down, too)."""
    store, mapping_id = mapped
    store.modes.set_mode(mapping_id, "manual")
    store.modes.release(mapping_id)
    store.modes.record_release(mapping_id, 1, 42)
    asked = store.modes.release(mapping_id)
    assert (asked.release, asked.released_upto, asked.released_release) == (2, 42, 1)
    store.modes.record_release(mapping_id, 2, 42)  # nothing new journaled since release 1
    taken = store.modes.get(mapping_id)
    assert (taken.released_upto, taken.released_release) == (42, 2)
    store.modes.record_release(mapping_id, 1, 50)  # a late report of the release before
    assert store.modes.get(mapping_id).released_release == 2


def test_missed_runs_happen_once(mapped: tuple[Store, int]) -> None:
    store, mapping_id = mapped
    info = store.modes.set_mode(mapping_id, "reserved", "every:60")
    assert info.next_run_at is not None
    later = info.next_run_at + 10 * 60  # ten slots missed
    assert store.modes.run_due(later) == [mapping_id]
    assert store.modes.run_due(later) == []
    after = store.modes.get(mapping_id)
    assert after.release == 1 and after.next_run_at == later + 60


def test_mode_rules(mapped: tuple[Store, int]) -> None:
    store, mapping_id = mapped
    with pytest.raises(ConfigError):
        store.modes.set_mode(mapping_id, "sometimes")
    with pytest.raises(ConfigError):
        store.modes.set_mode(mapping_id, "reserved")
    with pytest.raises(ConfigError):
        store.modes.set_mode(mapping_id, "manual", "every:5")


def test_transfer_override_reaches_the_assignment_and_survives_other_settings(
    mapped: tuple[Store, int],
) -> None:
    store, mapping_id = mapped
    assert store.modes.get_transfer(mapping_id) is None
    (spec,) = store.assignment_for("srcsrcsrcsrcsrcsrcsrcsrc").mappings
    assert spec.transfer_override == ""
    epoch = store.epoch()
    store.modes.set_transfer(mapping_id, "whole")
    assert store.epoch() > epoch  # agents get it with the next push
    store.modes.set_mode(mapping_id, "manual")
    assert store.modes.get_transfer(mapping_id) == "whole"
    (spec,) = store.assignment_for("srcsrcsrcsrcsrcsrcsrcsrc").mappings
    assert (spec.transfer_override, spec.mode) == ("whole", "manual")
    store.modes.set_transfer(mapping_id, None)
    (spec,) = store.assignment_for("t1" * 8).mappings
    assert spec.transfer_override == ""
    with pytest.raises(ConfigError, match="'rsync' is not one of auto, delta, whole"):
        store.modes.set_transfer(mapping_id, "rsync")


def test_a_tick_with_nothing_due_writes_nothing(mapped: tuple[Store, int]) -> None:
    """The scheduler asks twice a second: with nothing due it only reads. Before, each tick was a
    write transaction (on SQLite BEGIN IMMEDIATE: the write lock, against the job log's writes)."""
    store, mapping_id = mapped
    info = store.modes.set_mode(mapping_id, "reserved", "every:60")
    assert info.next_run_at is not None
    writes = 0
    write = store.modes._write

    def counted(operation: str) -> AbstractContextManager[Session]:
        nonlocal writes
        writes += 1
        return write(operation)

    store.modes._write = counted
    assert store.modes.run_due(info.next_run_at - 1) == []
    assert writes == 0
    assert store.modes.run_due(info.next_run_at) == [mapping_id]  # due: released, in a write
    assert writes == 1
    assert store.modes.get(mapping_id).release == 1
