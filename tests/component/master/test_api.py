"""The master's REST API over a real store and CA: auth, join, mappings, jobs, events, OpenAPI."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from fastapi.testclient import TestClient

from relaysync.auth.ca import CertificateAuthority, fingerprint, make_key_and_csr
from relaysync.master.app import create_app
from relaysync.master.events import EventBus, EventType
from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport

ADMIN = "admin-secret"


class Changes:
    """Counts on_change calls and the threads they ran on."""

    def __init__(self) -> None:
        self.calls = 0
        self.threads: set[int] = set()

    def __call__(self) -> None:
        self.calls += 1
        self.threads.add(threading.get_ident())


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


@pytest.fixture
def client(store: Store, ca: CertificateAuthority, changes: Changes) -> Iterator[TestClient]:
    app = create_app(
        store=store,
        ca=ca,
        events=EventBus(),
        admin_token=ADMIN,
        control_address="127.0.0.1:7000",
        on_change=changes,
    )
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


def join(client: TestClient, name: str) -> dict:
    token = client.post("/api/tokens/join", json={}).json()["token"]
    _key, csr = make_key_and_csr(name)
    resp = client.post("/api/join", json={"token": token, "name": name, "csr_pem": csr.decode()})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_health_needs_no_token_and_the_openapi_spec_a_read_token(client: TestClient) -> None:
    """Was: /openapi.json answered anyone (FastAPI's own route), every route, parameter and
    model of an API whose every other route but health, the CA and the join needs a token."""
    anonymous = TestClient(client.app)
    assert anonymous.get("/api/health").json()["status"] == "ok"
    refused = anonymous.get("/openapi.json")
    assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["detail"]
    created = client.post("/api/tokens/api", json={"name": "reader", "scope": "read"})
    assert created.status_code == 201, created.text
    reader = TestClient(client.app, headers={"Authorization": f"Bearer {created.json()['token']}"})
    spec = reader.get("/openapi.json").json()
    assert "/api/mappings/{id_or_name}/status" in spec["paths"]
    assert "/api/join" in spec["paths"]
    assert "/openapi.json" not in spec["paths"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/servers",
        "/api/mappings",
        "/api/jobs",
        "/api/exceptions",
        "/api/events",
        "/api/servers/x",
    ],
)
def test_routes_require_a_token(client: TestClient, path: str) -> None:
    anonymous = TestClient(client.app)
    resp = anonymous.get(path)
    assert resp.status_code == 401
    assert "Authorization: Bearer" in resp.json()["detail"]
    resp = anonymous.get(path, headers={"Authorization": "Bearer wrong"})
    assert resp.status_code == 401
    assert "invalid token" in resp.json()["detail"]
    assert anonymous.post("/api/tokens/api", json={"name": "x"}).status_code == 401


def test_api_token_works(client: TestClient) -> None:
    token = client.post("/api/tokens/api", json={"name": "ci"}).json()["token"]
    other = TestClient(client.app, headers={"Authorization": f"Bearer {token}"})
    assert other.get("/api/servers").status_code == 200


def test_join(client: TestClient, ca: CertificateAuthority) -> None:
    body = join(client, "web-1")
    assert body["node_id"] == fingerprint(body["cert_pem"].encode())
    assert body["ca_pem"] == ca.ca_pem.decode()
    assert body["control_address"] == "127.0.0.1:7000"
    cert = x509.load_pem_x509_certificate(body["cert_pem"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.ca_pem))
    server = client.get("/api/servers/web-1").json()
    assert (server["node_id"], server["state"]) == (body["node_id"], "unknown")
    assert client.get(f"/api/servers/{body['node_id']}").json()["name"] == "web-1"


def test_join_refusals(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    _key, csr = make_key_and_csr("n")
    resp = anonymous.post(
        "/api/join", json={"token": "bogus", "name": "n", "csr_pem": csr.decode()}
    )
    assert resp.status_code == 403 and "join token" in resp.json()["detail"]
    token = client.post("/api/tokens/join", json={"ttl_s": 60}).json()["token"]
    resp = anonymous.post("/api/join", json={"token": token, "name": "n", "csr_pem": "garbage"})
    assert resp.status_code == 400 and "malformed" in resp.json()["detail"]
    resp = anonymous.post(
        "/api/join", json={"token": token, "name": "bad name", "csr_pem": csr.decode()}
    )
    assert resp.status_code == 400 and "node name" in resp.json()["detail"]
    assert (
        anonymous.post(
            "/api/join", json={"token": token, "name": "n", "csr_pem": csr.decode()}
        ).status_code
        == 200
    )
    resp = anonymous.post("/api/join", json={"token": token, "name": "n", "csr_pem": csr.decode()})
    assert resp.status_code == 409 and "DELETE /api/servers/n" in resp.json()["detail"]
    assert client.delete("/api/servers/n").status_code == 204
    assert (
        anonymous.post(
            "/api/join", json={"token": token, "name": "n", "csr_pem": csr.decode()}
        ).status_code
        == 200
    )


def test_unknown_server_is_404(client: TestClient) -> None:
    resp = client.get("/api/servers/ghost")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "Server 'ghost' not found."}


def test_mappings_crud_calls_on_change(client: TestClient, changes: Changes) -> None:
    src, dst = join(client, "src"), join(client, "dst")
    before = changes.calls
    body = {
        "name": "www",
        "source": "src",
        "source_path": "/srv",
        "targets": [{"server": "dst", "path": "/www"}],
    }
    resp = client.post("/api/mappings", json=body)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["source_node"] == src["node_id"]
    assert created["targets"] == [{"node_id": dst["node_id"], "name": "dst", "path": "/www"}]
    assert changes.calls == before + 1
    assert (
        len(changes.threads) == 1
    )  # always the event loop's thread, whichever worker ran the handler
    assert client.get("/api/mappings").json() == [created]
    assert client.get("/api/mappings/www").json() == created
    resp = client.patch(
        f"/api/mappings/{created['id']}", json={"durability": "fast", "include": [r"\.html$"]}
    )
    assert resp.status_code == 200 and resp.json()["durability"] == "fast"
    assert changes.calls == before + 2
    assert client.delete("/api/mappings/www").status_code == 204
    assert changes.calls == before + 3
    assert client.get("/api/mappings/www").status_code == 404


def test_mapping_errors_are_clear(client: TestClient, changes: Changes) -> None:
    join(client, "src")
    join(client, "dst")
    before = changes.calls
    bad = {
        "name": "m",
        "source": "src",
        "source_path": "relative",
        "targets": [{"server": "dst", "path": "/x"}],
    }
    resp = client.post("/api/mappings", json=bad)
    assert resp.status_code == 422 and "absolute" in resp.json()["detail"]
    resp = client.post("/api/mappings", json={**bad, "source_path": "/a", "source": "ghost"})
    assert resp.status_code == 404 and "ghost" in resp.json()["detail"]
    resp = client.post("/api/mappings", json={**bad, "source_path": "/a", "exclude": ["("]})
    assert resp.status_code == 422 and "regular expression" in resp.json()["detail"]
    assert client.patch("/api/mappings/nope", json={"enabled": False}).status_code == 404
    assert changes.calls == before


@pytest.mark.parametrize(
    ("source_path", "target", "target_path", "rule"),
    [
        (
            "/srv/docs",
            "src",
            "/srv/docs/mirror",
            "contain each other",
        ),  # the copy replicates itself
        ("/srv/docs", "src", "/srv", "contain each other"),  # the target erases /srv/* but docs
        (
            "/srv/docs",
            "dst",
            "/",
            "system folder",
        ),  # a comparison erases what the source lacks there
        ("/srv/docs", "dst", "/etc", "system folder"),
        ("/srv/docs", "dst", "/usr", "system folder"),
        ("/srv/docs", "dst", "/boot", "system folder"),
        ("/", "dst", "/backup", "system folder"),  # a source of / sends /proc, /sys and /dev
    ],
)
def test_mapping_folders_that_would_wreck_a_server_are_refused(
    client: TestClient, changes: Changes, source_path: str, target: str, target_path: str, rule: str
) -> None:
    join(client, "src")
    join(client, "dst")
    before = changes.calls
    resp = client.post(
        "/api/mappings",
        json={
            "name": "m",
            "source": "src",
            "source_path": source_path,
            "targets": [{"server": target, "path": target_path}],
        },
    )
    assert resp.status_code == 422, (
        f"{source_path} -> {target}:{target_path}: {resp.status_code} {resp.text}"
    )
    assert rule in resp.json()["detail"]
    assert client.get("/api/mappings").json() == [] and changes.calls == before


def test_status_jobs_and_exceptions(client: TestClient, store: Store) -> None:
    src, dst = join(client, "src"), join(client, "dst")
    m = client.post(
        "/api/mappings",
        json={
            "name": "m",
            "source": "src",
            "source_path": "/a",
            "targets": [{"server": "dst", "path": "/b"}],
        },
    ).json()
    records = (
        CommitRecord(seq=1, op="file", path="x"),
        CommitRecord(seq=2, op="file", path="y", ok=False, error="EIO"),
        CommitRecord(seq=3, op="delete", path="z"),
    )
    store.record_commit_reports(
        [
            CommitReport(
                mapping_id=m["id"],
                source_node=src["node_id"],
                target_node=dst["node_id"],
                watermark=1,
                records=records,
            )
        ]
    )
    status = client.get(f"/api/mappings/{m['id']}/status").json()
    [target] = status["targets"]
    assert (
        target["watermark"],
        target["highest_seq"],
        target["lag"],
        target["open_exceptions"],
    ) == (1, 3, 2, 1)
    jobs = client.get("/api/jobs", params={"mapping": "m", "limit": 2}).json()
    assert [(j["seq"], j["committed_targets"]) for j in jobs] == [(3, 0), (2, 0)]
    assert [j["seq"] for j in client.get("/api/jobs", params={"before": 2}).json()] == [1]
    cursor = f"2:{m['id']}:{src['node_id']}"  # the whole key of the row with seq 2
    assert [j["seq"] for j in client.get("/api/jobs", params={"before": cursor}).json()] == [1]
    assert [(j["journal_id"], j["replaced"]) for j in jobs] == [("", False)] * 2
    # with the row's journal id ("" here): the rest of seq 2's rows of other journals, then 1
    named = client.get("/api/jobs", params={"before": cursor + ":"})
    assert [j["seq"] for j in named.json()] == [1]
    for bad in ("2:x:y", "2:1", "99999999999999999999", f"2:{2**63}:{src['node_id']}"):
        assert client.get("/api/jobs", params={"before": bad}).status_code == 422, bad
    [exc] = client.get("/api/exceptions").json()
    assert (exc["seq"], exc["error"], exc["journal_id"]) == (2, "EIO", "")  # none named
    assert client.get("/api/jobs", params={"limit": 0}).status_code == 422


def test_events_long_poll(client: TestClient) -> None:
    first = client.get("/api/events").json()
    last = first[-1]["id"] if first else 0
    started = time.monotonic()
    assert client.get("/api/events", params={"since": last, "timeout_s": 0.2}).json() == []
    assert time.monotonic() - started >= 0.15
    join(client, "n1")
    events = client.get("/api/events", params={"since": last, "timeout_s": 5}).json()
    assert "server_joined" in [e["type"] for e in events]
    assert client.get("/api/events", params={"timeout_s": 3600}).status_code == 422


def test_events_long_poll_wakes_on_publish(client: TestClient) -> None:
    events: EventBus = client.app.state.context.events
    last = events.last_id
    timer = threading.Timer(0.1, lambda: events.publish(EventType.SERVER_UP))
    timer.start()
    started = time.monotonic()
    got = client.get("/api/events", params={"since": last, "timeout_s": 30}).json()
    timer.join()
    assert [e["type"] for e in got] == ["server_up"]
    # woken, not timed out (a poll that timed out returns what came meanwhile too): a bound far
    # from the 0.1 s it takes, far below the poll's timeout
    assert time.monotonic() - started < 15


def test_failing_on_change_does_not_fail_the_request(
    store: Store, ca: CertificateAuthority
) -> None:
    def broken() -> None:
        raise RuntimeError("control server gone")

    app = create_app(
        store=store,
        ca=ca,
        events=EventBus(),
        admin_token=ADMIN,
        control_address="127.0.0.1:7000",
        on_change=broken,
    )
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        assert client.post("/api/tokens/api", json={"name": "x"}).status_code == 201


def test_a_mappings_target_policy_is_set_and_changed(client: TestClient, changes: Changes) -> None:
    """Symlinks and the mode mask: "" (the agents' default) and o-w until the operator says."""
    join(client, "src")
    join(client, "dst")
    body = {
        "name": "www",
        "source": "src",
        "source_path": "/srv",
        "targets": [{"server": "dst", "path": "/www"}],
    }
    created = client.post("/api/mappings", json=body).json()
    url = f"/api/mappings/{created['id']}/target-policy"
    assert client.get(url).json() == {"mapping_id": created["id"], "symlinks": "", "mode_mask": 2}
    before = changes.calls
    resp = client.put(url, json={"symlinks": "any", "mode_mask": 0})
    assert resp.status_code == 200, resp.text
    assert client.get("/api/mappings/www/target-policy").json()["symlinks"] == "any"
    assert changes.calls == before + 1
    assert client.put(url, json={"symlinks": "all", "mode_mask": 0}).status_code == 422
    assert client.put(url, json={"symlinks": "", "mode_mask": 0o1000}).status_code == 422
    refused = client.put(url, json={"symlinks": "", "mode_mask": 0o200})  # u-w: EACCES for ever
    assert refused.status_code == 422 and "removes the owner's bits" in refused.text
    assert client.get(url).json()["mode_mask"] == 0


def test_a_mapping_whose_source_is_revoked_is_listed_as_it_is_sent_idle(
    client: TestClient, store: Store, tmp_path: Path
) -> None:
    """Was: GET /api/mappings (and `relaysync mapping list`) showed it enabled, although every
    assignment sends it disabled (its targets serve it no more) and its status says why."""
    web = join(client, "web")
    join(client, "src"), join(client, "spare")
    body = {
        "name": "www",
        "source": "src",
        "source_path": "/srv",
        "targets": [{"server": "web", "path": "/www"}],
    }
    mapping = client.post("/api/mappings", json=body).json()
    assert (mapping["state"], mapping["source_revoked"]) == ("enabled", False)
    assert client.post("/api/servers/src/revoke").status_code == 200

    (listed,) = client.get("/api/mappings").json()
    one = client.get(f"/api/mappings/{mapping['id']}").json()
    for shown in (listed, one):
        assert (shown["enabled"], shown["state"], shown["source_revoked"]) == (
            True,  # as the operator set it: the mapping runs again once it names another source
            "source_revoked",
            True,
        )
    (sent,) = store.assignment_for(web["node_id"]).mappings
    assert not sent.enabled  # what the target is told: the listing says the same
    status = client.get(f"/api/mappings/{mapping['id']}/status").json()
    assert "'src' was revoked" in status["source_error"]

    # Disabled by an operator: that is what shows, revoked source or not.
    client.patch(f"/api/mappings/{mapping['id']}", json={"enabled": False})
    assert client.get("/api/mappings").json()[0]["state"] == "disabled"
    # Another source: enabled again, as sent.
    patch = {"enabled": True, "source": "spare", "source_path": "/srv"}
    assert client.patch(f"/api/mappings/{mapping['id']}", json=patch).status_code == 200
    assert client.get("/api/mappings").json()[0]["state"] == "enabled"
