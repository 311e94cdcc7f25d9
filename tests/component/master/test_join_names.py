"""POST /api/join over a real store and CA: the names an agent may join under. None with a final
newline, none the master goes by ("master" is its name in monitoring), none another server has
in another case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.component.master._app import ADMIN, admin_app

from relaysync.auth.ca import make_key_and_csr
from relaysync.master.store import Store


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    app = admin_app(store, tmp_path)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def _join(client: TestClient, name: str) -> tuple[int, str]:
    token = client.post("/api/tokens/join", json={}).json()["token"]
    _key, csr = make_key_and_csr("x")
    answer = TestClient(client.app).post(
        "/api/join", json={"token": token, "name": name, "csr_pem": csr.decode()}
    )
    return answer.status_code, answer.json().get("detail", "")


@pytest.mark.parametrize("name", ["web1\n", "relaysync-master\n"])
def test_a_name_with_a_final_newline_is_refused(client: TestClient, name: str) -> None:
    status, detail = _join(client, name)
    assert status == 400 and "is not valid" in detail
    assert client.get("/api/servers").json() == []


@pytest.mark.parametrize("name", ["master", "Master"])
def test_no_agent_joins_as_master(client: TestClient, name: str) -> None:
    status, detail = _join(client, name)
    assert status == 400 and "reserved for the master" in detail
    assert client.get("/api/servers").json() == []


def test_a_name_another_server_has_in_another_case_is_taken(client: TestClient) -> None:
    assert _join(client, "web1")[0] == 200
    status, detail = _join(client, "Web1")
    assert status == 409 and "'web1'" in detail and "relaysync server remove web1" in detail
    assert [s["name"] for s in client.get("/api/servers").json()] == ["web1"]
