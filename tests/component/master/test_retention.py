"""Job-log retention through the REST API, and the master's pruning task over a real store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fastapi.testclient import TestClient
from tests.component.master._app import ADMIN, admin_app

from relaysync.master.retention import RetentionPruner
from relaysync.master.store import Store, _joblog
from relaysync.master.store._retention import DAY_S
from relaysync.protocol.messages import CommitRecord, CommitReport

SRC, TGT = "a" * 64, "b" * 64


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    app = admin_app(store, tmp_path)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def test_get_put_round_trip(client: TestClient) -> None:
    got = client.get("/api/retention").json()
    assert {
        k: got[k]
        for k in (
            "changes_days",
            "advances_days",
            "exceptions_days",
            "recovery_jobs_days",
            "alerts_days",
        )
    } == {
        "changes_days": 30,
        "advances_days": 90,
        "exceptions_days": 90,
        "recovery_jobs_days": 90,
        "alerts_days": 90,
    }
    assert got["updated_at"] is None and got["last_pruned_at"] is None
    put = client.put(
        "/api/retention", json={"changes_days": 7, "recovery_jobs_days": 0, "alerts_days": 14}
    )
    assert put.status_code == 200, put.text
    assert (
        put.json()["changes_days"],
        put.json()["advances_days"],
        put.json()["recovery_jobs_days"],
        put.json()["alerts_days"],
    ) == (7, 90, 0, 14)
    assert client.get("/api/retention").json() == put.json()


@pytest.mark.parametrize(
    "body",
    [
        {"changes_days": -1},
        {"changes_days": 36_501},
        {"changes_days": 1.5},
        {"changes_days": "soon"},
        {"metrics_days": 3},
        {"alerts_days": -1},
    ],
)
def test_bad_values_are_422_and_change_nothing(client: TestClient, body: dict[str, object]) -> None:
    before = client.get("/api/retention").json()
    resp = client.put("/api/retention", json={"advances_days": 1, **body})
    assert resp.status_code == 422, resp.text
    assert client.get("/api/retention").json() == before


def test_needs_a_token(client: TestClient) -> None:
    assert TestClient(client.app).get("/api/retention").status_code == 401
    assert TestClient(client.app).put("/api/retention", json={}).status_code == 401


def test_the_prune_task_runs_and_records_what_it_deleted(store: Store) -> None:
    store.upsert_server(node_id=SRC, name="src", region="", group="", address="src:1")
    store.upsert_server(node_id=TGT, name="tgt", region="", group="", address="tgt:1")
    mid = store.create_mapping(name="m", source="src", source_path="/a", targets=[("tgt", "/b")]).id
    old = time.time() - 40 * DAY_S
    for seq in (1, 2, 3):  # three reports 40 days old, each one advance and one change row
        report = CommitReport(
            mapping_id=mid,
            source_node=SRC,
            target_node=TGT,
            watermark=seq,
            records=(CommitRecord(seq=seq, op="write", path=f"f{seq}"),),
        )
        with store._write("old report") as session:
            _joblog.record(session, [report], old)
    store.retention.set({"advances": 30})
    pruner = RetentionPruner(store, first_after_s=0.0, interval_s=3600.0, batch_rows=1)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(pruner.serve)
            with anyio.fail_after(10):
                while pruner.runs == 0:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    got = store.retention.get()
    # change rows older than 30 days go except the newest; advances too, one row per batch
    assert got.last_pruned == {
        "changes": 2,
        "advances": 3,
        "exceptions": 0,
        "recovery_jobs": 0,
        "alerts": 0,
    }
    assert got.last_pruned_at is not None and got.last_pruned_at > old
    assert [w.seq for w in store.watermarks(mid)] == [3]
    assert store.advances(mapping_id=mid) == []
