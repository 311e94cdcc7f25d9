"""/api/nm-jobs over a real store (SQLite and PostgreSQL): create, list, show, conflicts, delete."""

from __future__ import annotations

from fastapi.testclient import TestClient
from tests.component.master.test_api import Changes, ca, changes, client  # noqa: F401 - fixtures

from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport


def _servers(store: Store) -> None:
    for name in ("src1", "src2", "t1", "t2"):
        store.upsert_server(node_id=name * 8, name=name, region="r", group="g", address=f"{name}:1")


def test_nm_jobs_crud_and_conflicts(client: TestClient, store: Store, changes: Changes) -> None:  # noqa: F811
    _servers(store)
    body = {
        "name": "dc1",
        "sources": [{"server": "src1", "path": "/a"}, {"server": "src2", "path": "/b"}],
        "targets": [{"server": "t1", "path": "/x"}, {"server": "t2", "path": "/x"}],
    }
    r = client.post("/api/nm-jobs", json=body)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["conflict"] == "newest-mtime" and [m["name"] for m in job["members"]] == [
        "dc1@src1",
        "dc1@src2",
    ]
    assert changes.calls == 1
    assert [j["name"] for j in client.get("/api/nm-jobs").json()] == ["dc1"]
    assert client.get("/api/nm-jobs/dc1").json()["id"] == job["id"]
    assert len(client.get("/api/mappings").json()) == 2  # members are ordinary mappings
    member = job["members"][0]
    store.nm_jobs.record_conflicts(
        [
            CommitReport(
                mapping_id=member["mapping_id"],
                source_node="src1" * 8,
                target_node="t1" * 8,
                watermark=1,
                records=(
                    CommitRecord(
                        seq=1,
                        op="write",
                        path="p",
                        committed_at=5.0,
                        conflict="older",
                        conflict_with="src2" * 8,
                    ),
                ),
            )
        ]
    )
    (c,) = client.get(f"/api/nm-jobs/{job['id']}/conflicts").json()
    assert (c["path"], c["winner_node"], c["loser_node"]) == ("p", "src2" * 8, "src1" * 8)
    events = client.get("/api/events").json()
    assert any(e["type"] == "nm_job_created" and e["data"]["name"] == "dc1" for e in events)
    assert client.delete("/api/nm-jobs/dc1").status_code == 204
    assert (
        client.get("/api/mappings").json() == []
        and client.get("/api/nm-jobs/dc1").status_code == 404
    )


def test_nm_job_errors_are_clear(client: TestClient, store: Store) -> None:  # noqa: F811
    _servers(store)
    bad = {
        "name": "j",
        "sources": [{"server": "t1", "path": "/a"}],
        "targets": [{"server": "t1", "path": "/x"}],
    }
    r = client.post("/api/nm-jobs", json=bad)
    assert r.status_code == 422 and "both a source and a target" in r.json()["detail"]
    r = client.post("/api/nm-jobs", json={**bad, "sources": [{"server": "ghost", "path": "/a"}]})
    assert r.status_code == 404
    assert client.post("/api/nm-jobs", json={**bad, "sources": []}).status_code == 422
