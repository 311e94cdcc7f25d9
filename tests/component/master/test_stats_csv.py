"""GET /api/stats?format=csv with names a spreadsheet would take for formulas."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.component.master._app import ADMIN_HEADERS, admin_app
from tests.component.master.test_api import join

from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport

FORMULAS = (
    '=HYPERLINK("http://evil.example","open me")',
    "=cmd|' -c calc'!A0",
    "+1+2",
    "-1+2",
    "@SUM(A1)",
    "\t=1",
)


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(admin_app(store, tmp_path), headers=ADMIN_HEADERS) as c:
        yield c


def test_a_mapping_named_like_a_formula_is_text_in_the_stats_csv(
    client: TestClient, store: Store
) -> None:
    """Was: the key cell was written as the mapping was named, and a spreadsheet opening the
    download ran `=HYPERLINK(...)` or the DDE `=cmd|...`."""
    src, dst = join(client, "src"), join(client, "dst")
    for i, name in enumerate(FORMULAS):
        targets = [{"server": "dst", "path": f"/b{i}"}]
        body = {"name": name, "source": "src", "source_path": f"/a{i}", "targets": targets}
        created = client.post("/api/mappings", json=body)
        assert created.status_code == 201, created.text
        record = CommitRecord(seq=1, op="file", path="x", ok=False, error="EIO")
        report = CommitReport(
            mapping_id=created.json()["id"],
            source_node=src["node_id"],
            target_node=dst["node_id"],
            watermark=0,
            records=(record,),
        )
        store.record_commit_reports([report])
    r = client.get("/api/stats", params={"by": "mapping", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    header, *rows = csv.reader(io.StringIO(r.text))
    keys = {row[header.index("key")] for row in rows}
    assert keys == {f"'{name}" for name in FORMULAS}  # text in every spreadsheet, nothing run
    assert all(row[header.index("failures")] == "1" for row in rows)  # numbers stay numbers
