"""The REST API's limits over a real store and CA: request bodies are bounded before any token
check or parsing (413), and numbers no column can hold, or NaN and Infinity, are a clear 422,
never a 500 (an unauthenticated one on /api/join included)."""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from tests.component.master._app import ADMIN, admin_app

from relaysync.auth.ca import make_key_and_csr
from relaysync.constants import API_JOIN_MAX_BODY_BYTES, API_MAX_BODY_BYTES
from relaysync.master.api._limits import INT64_MAX, RequestLimits
from relaysync.master.app import ROUTES
from relaysync.master.store import Store

BIG = 10**20  # past 2^63-1: SQLite's driver overflows (500 before), PostgreSQL's too


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    app = admin_app(store, tmp_path)
    with TestClient(
        app, headers={"Authorization": f"Bearer {ADMIN}"}, raise_server_exceptions=False
    ) as c:
        yield c


def _anonymous(client: TestClient) -> TestClient:
    return TestClient(client.app, raise_server_exceptions=False)


def _raw(client: TestClient, path: str, body: str | bytes) -> Any:
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


# --- Body size ---


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/api/join", API_JOIN_MAX_BODY_BYTES), ("/api/mappings", API_MAX_BODY_BYTES)],
)
def test_an_anonymous_body_over_the_limit_is_refused_before_anything_else(
    client: TestClient, path: str, limit: int
) -> None:
    body = b'{"token": "rsj_x", "name": "web1", "csr_pem": "' + b"A" * limit + b'"}'
    answer = _raw(_anonymous(client), path, body)
    assert answer.status_code == 413  # not 403 / 401: the body was never parsed
    assert answer.json()["detail"] == (
        f"the request body is larger than {limit} bytes, the most {path} takes"
    )


def test_a_body_without_a_length_is_bounded_as_it_is_read(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(API_MAX_BODY_BYTES // 65536 + 2):
            yield b"A" * 65536
        yield b'"}'

    answer = client.post("/api/mappings", content=chunks())  # chunked: no Content-Length
    assert answer.status_code == 413


def test_the_middleware_reads_no_further_than_the_limit() -> None:
    """Memory: a client streaming forever costs the master at most the limit, then 413."""
    pulled = 0
    sent: list[dict[str, Any]] = []
    reached_app = False

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1024
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal reached_app
        reached_app = True

    limits = RequestLimits(app, max_body_bytes=10_000, per_path={})
    scope = {"type": "http", "path": "/api/mappings", "headers": []}
    anyio.run(limits, scope, receive, send)
    assert not reached_app and sent[0]["status"] == 413
    assert pulled <= 10_000 + 1024


def test_a_body_under_the_limit_still_reaches_the_route(client: TestClient) -> None:
    _key, csr = make_key_and_csr("web1")
    token = client.post("/api/tokens/join", json={}).json()["token"]
    body = {"token": token, "name": "web1", "csr_pem": csr.decode()}
    assert _anonymous(client).post("/api/join", json=body).status_code == 200


# --- Numbers in JSON bodies ---


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", str(BIG)])
def test_an_anonymous_join_with_a_bad_number_is_a_clear_422(
    client: TestClient, number: str
) -> None:
    answer = _raw(_anonymous(client), "/api/join", f'{{"token": {number}, "name": "x"}}')
    assert answer.status_code == 422
    assert "JSON body holds" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/tokens/join", '{"ttl_s": Infinity}'),  # stored as a token that never expires
        ("/api/thresholds", '{"metric": "cpu_percent", "value": NaN}'),  # 503 with SQL before
        (
            "/api/probes",
            '{"name": "p", "kind": "tcp", "host": "h", "port": 80, "timeout_s": 1e999}',
        ),
    ],
)
def test_non_finite_numbers_are_refused_everywhere(
    client: TestClient, path: str, body: str
) -> None:
    answer = _raw(client, path, body)
    assert answer.status_code == 422 and "numbers must be finite" in answer.json()["detail"]
    assert client.get(path).json() == []  # nothing was stored


# --- Numbers in paths and queries ---


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", f"/api/mappings/m/changes/{BIG}"),
        ("GET", f"/api/jobs?before={BIG}"),
        ("GET", f"/api/purges?before={BIG}"),
        ("GET", f"/api/events?since={BIG}"),
        ("GET", f"/api/nm-jobs/j/conflicts?limit={BIG}"),
        ("POST", f"/api/alerts/{BIG}/acknowledge"),
        ("DELETE", f"/api/tokens/api/{BIG}"),
        ("DELETE", f"/api/policies/{BIG}"),
        ("DELETE", f"/api/probes/{BIG}"),
        ("DELETE", f"/api/thresholds/{BIG}"),
        ("DELETE", f"/api/alert-channels/{BIG}"),
    ],
)
def test_an_integer_past_64_bits_in_a_path_or_query_is_a_422(
    client: TestClient, method: str, url: str
) -> None:
    answer = client.request(method, url)
    assert answer.status_code == 422, answer.text
    assert str(INT64_MAX) in json.dumps(answer.json()) or "1000" in answer.text


@pytest.mark.parametrize("url", [f"/api/sites/{BIG}", f"/api/mappings/{BIG}", "/api/nm-jobs/1²"])
def test_an_id_no_row_can_have_is_not_found(client: TestClient, url: str) -> None:
    assert client.get(url).status_code == 404


def test_every_integer_in_a_path_or_query_is_bounded() -> None:
    """A route added later with a bare `int` parameter would bring the 500 back."""
    unbounded = []
    for route in ROUTES:
        hints = typing.get_type_hints(route.endpoint, include_extras=True)
        for name in inspect.signature(route.endpoint).parameters:
            hint = hints.get(name)
            if hint is None or "int" not in str(hint) or "BaseModel" in str(hint):
                continue
            bounds = [m for m in getattr(hint, "__metadata__", ()) if hasattr(m, "metadata")]
            limits = [getattr(c, "le", None) for m in bounds for c in m.metadata]
            if not any(le is not None and le <= INT64_MAX for le in limits):
                unbounded.append(f"{route.path} {name}")
    assert unbounded == []


# --- Numbers written as strings, nesting ---

THRESHOLD = {"metric": "cpu_percent", "value": 90}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/thresholds", THRESHOLD | {"value": "NaN"}),  # 503 with SQL before
        ("/api/thresholds", THRESHOLD | {"value": "Infinity"}),  # stored, listed as null
        ("/api/thresholds", THRESHOLD | {"value": "1e400"}),
        ("/api/thresholds", THRESHOLD | {"for_s": "inf"}),
        ("/api/thresholds", THRESHOLD | {"hysteresis": "Infinity"}),
        ("/api/tokens/join", {"ttl_s": "Infinity"}),
        ("/api/probes", {"name": "p", "kind": "tcp", "host": "h", "port": 80, "timeout_s": "inf"}),
    ],
)
def test_non_finite_numbers_given_as_strings_are_refused(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    """pydantic's lax mode turns the strings "NaN", "inf" and "1e400" into floats."""
    answer = client.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert "finite" in answer.text
    assert client.get(path).json() == []  # nothing was stored


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation holds, at any depth (list[X], X | None, dict[str, X])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models_in(field.annotation)
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def test_every_request_model_refuses_non_finite_floats() -> None:
    """A body model added later on plain BaseModel would let "NaN" in again."""
    models = {
        model
        for route in ROUTES
        for name, hint in typing.get_type_hints(route.endpoint).items()
        if name != "return"
        for model in _models_in(hint)
    }
    assert len(models) > 20  # the walk finds the nested ones (TargetIn, WindowIn, ...) too
    assert (
        sorted(m.__name__ for m in models if m.model_config.get("allow_inf_nan") is not False) == []
    )


def test_a_threshold_stored_before_the_check_is_still_listed(
    client: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response models of thresholds, probes and channels derive from the request ones.
    The row is stored as an older release did, before the store refused non-finite values."""
    from relaysync.master.store import _monitoring

    monkeypatch.setattr(_monitoring, "_check_finite", lambda value, what: None)
    store.monitoring.create_threshold(
        scope="all", metric="cpu_percent", operator=">", value=float("inf")
    )
    answer = client.get("/api/thresholds")
    assert answer.status_code == 200 and answer.json()[0]["value"] is None


@pytest.mark.parametrize("path", ["/api/join", "/api/mappings"])
@pytest.mark.parametrize("content_type", ["application/json", None])
def test_a_deeply_nested_body_is_a_400_not_a_500(
    client: TestClient, path: str, content_type: str | None
) -> None:
    """The JSON decoder recurses per level: 5,000 '[' (5 KiB, under the join's limit) was a
    RecursionError out of the middleware, a 500 and a traceback per anonymous request."""
    headers = {"Content-Type": content_type} if content_type else {}
    answer = _anonymous(client).post(path, content=b"[" * 5000, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["detail"] == "the JSON body is nested too deeply"


@pytest.mark.parametrize("since", ["nan", "inf", "1e400"])
def test_a_non_finite_time_in_a_query_is_a_422(client: TestClient, since: str) -> None:
    assert client.get(f"/api/stats?since={since}").status_code == 422
