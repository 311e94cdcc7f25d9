"""REST /api/sites, /api/providers, /api/purges over a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from relaysync.auth.ca import CertificateAuthority
from relaysync.master.app import create_app
from relaysync.master.events import EventBus
from relaysync.master.store import Store
from relaysync.purge.jobs import PurgeItem, PurgeResult

ADMIN = "admin-secret"


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    for node, name in (("a" * 64, "src"), ("b" * 64, "t1"), ("c" * 64, "t2")):
        store.upsert_server(node_id=node, name=name, region="r", group="g", address="127.0.0.1:1")
    store.create_mapping(
        name="web", source="src", source_path="/s", targets=[("t1", "/t"), ("t2", "/t")]
    )
    app = create_app(
        store=store,
        ca=CertificateAuthority.load_or_create(tmp_path / "ca"),
        events=EventBus(),
        admin_token=ADMIN,
        control_address="127.0.0.1:1",
        on_change=lambda: None,
    )
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        yield c


SITE = {
    "name": "www",
    "provider": "acme",
    "mapping": "web",
    "base_urls": ["http://example.com"],
    "aliases": ["www.example.com"],
    "path_prefix": "/static/",
    "caches": [
        {"name": "v1", "driver": "varnish", "address": "127.0.0.1:6081"},
        {
            "name": "cdn",
            "driver": "http",
            "address": "127.0.0.1:9000",
            "method": "BAN",
            "path_template": "/purge?u={url}",
            "headers": {"X-Key": "k"},
        },
    ],
}


def test_site_crud_hides_the_secret(client: TestClient) -> None:
    r = client.post("/api/sites", json=SITE)
    assert r.status_code == 201, r.text
    created = r.json()
    assert len(created["secret"]) >= 32  # shown once
    assert {o["name"] for o in created["origins"]} == {"t1", "t2"}  # default: the mapping's targets
    got = client.get("/api/sites/www").json()
    assert got["secret"] == "**********" and got["caches"][1]["headers"] == {"X-Key": "********"}
    assert [s["name"] for s in client.get("/api/sites").json()] == ["www"]
    assert client.get("/api/providers").json() == [{"id": 1, "name": "acme", "sites": 1}]
    r = client.patch(
        "/api/sites/www",
        json={"aliases": [], "origins": [{"server": "t1", "url": "http://127.0.0.1:8080"}]},
    )
    assert r.status_code == 200 and r.json()["aliases"] == [] and r.json()["secret"] == "**********"
    assert [o["name"] for o in r.json()["origins"]] == ["t1"]
    assert client.delete("/api/sites/www").status_code == 204
    assert client.get("/api/sites/www").status_code == 404


def test_cache_headers_are_never_sent_back_and_a_listing_sent_back_keeps_them(
    client: TestClient, store: Store
) -> None:
    """An http cache's headers carry the purge API's token: GET showed them in clear. A PATCH of
    the caches as listed (headers masked) keeps the stored values; the mask where nothing is
    stored, or in a new site, is refused (it would become the token)."""
    assert client.post("/api/sites", json=SITE).status_code == 201
    listed = client.get("/api/sites/www").json()["caches"]
    assert listed[1]["headers"] == {"X-Key": "********"}
    listed[1]["refresh"] = False  # the cache still purges where it did
    r = client.patch("/api/sites/www", json={"caches": listed})
    assert r.status_code == 200, r.text
    cdn = store.get_site("www").caches[1]
    assert dict(cdn.headers) == {"X-Key": "k"} and cdn.refresh is False
    listed[1]["headers"] = {"X-Key": "********", "X-Other": "********"}
    assert client.patch("/api/sites/www", json={"caches": listed}).status_code == 422
    other = {**SITE, "name": "www2", "base_urls": ["http://other.example.com"], "aliases": []}
    other["caches"] = [{**SITE["caches"][1], "headers": {"X-Key": "********"}}]
    assert client.post("/api/sites", json=other).status_code == 422
    assert dict(store.get_site("www").caches[1].headers) == {"X-Key": "k"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "127.0.0.1:9001"),
        ("address", "https://attacker.example:443"),
        ("driver", "varnish"),
        ("method", "POST"),
        ("path_template", "/steal?u={url}"),
    ],
)
def test_a_masked_header_is_not_sent_where_its_cache_did_not_purge(
    client: TestClient, store: Store, field: str, value: str
) -> None:
    """A listing sent back with the cache moved (another address, driver, method or path)
    kept the masked purge token and sent it there: any API token could collect it by pointing
    the cache at itself. The token must now be given again, and nothing changes until it is."""
    assert client.post("/api/sites", json=SITE).status_code == 201
    listed = client.get("/api/sites/www").json()["caches"]
    listed[1][field] = value
    r = client.patch("/api/sites/www", json={"caches": listed})
    assert r.status_code == 422, r.text
    assert "X-Key" in r.json()["detail"] and field in r.json()["detail"]
    cdn = store.get_site("www").caches[1]
    assert cdn.address == "127.0.0.1:9000" and dict(cdn.headers) == {"X-Key": "k"}
    listed[1]["headers"] = {"X-Key": "a new token for the new place"}
    r = client.patch("/api/sites/www", json={"caches": listed})
    assert r.status_code == 200, r.text
    moved = store.get_site("www").caches[1]
    assert dict(moved.headers) == {"X-Key": "a new token for the new place"}


def test_an_empty_secret_neither_shows_nor_changes_the_site_secret(
    client: TestClient, store: Store
) -> None:
    """PATCH {"secret": ""} left the secret as it was and answered with it in clear (the answer
    shows the secret when one is set): any API token read the listener's HMAC key. An empty or
    too long secret is refused now; only a new secret is shown, once."""
    secret = client.post("/api/sites", json={**SITE, "secret": "s" * 40}).json()["secret"]
    for bad in ("", "x" * 129):
        r = client.patch("/api/sites/www", json={"secret": bad})
        assert r.status_code == 422, r.text
        assert secret not in r.text
    assert store.get_site("www").secret == secret
    r = client.patch("/api/sites/www", json={"aliases": []})
    assert r.status_code == 200 and r.json()["secret"] == "**********"
    r = client.patch("/api/sites/www", json={"secret": "n" * 128})
    assert r.status_code == 200 and r.json()["secret"] == "n" * 128
    assert client.get("/api/sites/www").json()["secret"] == "**********"
    long = {**SITE, "name": "www2", "base_urls": ["http://o.example.com"], "secret": "l" * 129}
    r = client.post("/api/sites", json={**long, "aliases": []})
    assert r.status_code == 422 and "128" in r.json()["detail"], r.text


def test_listings_are_off_unless_set(client: TestClient, store: Store) -> None:
    """A site whose web server lists directories (autoindex) says so; others pay nothing."""
    assert client.post("/api/sites", json=SITE).json()["listings"] is False
    r = client.patch("/api/sites/www", json={"listings": True})
    assert r.status_code == 200 and r.json()["listings"] is True, r.text
    assert store.get_site("www").listings is True
    r = client.patch("/api/sites/www", json={"aliases": []})  # other fields leave it as it is
    assert r.json()["listings"] is True
    other = {**SITE, "name": "www2", "base_urls": ["http://other.example.com"], "listings": True}
    assert client.post("/api/sites", json=other).json()["listings"] is True
    assert [s["listings"] for s in client.get("/api/sites").json()] == [True, True]


def test_query_variants_default_to_null_and_asking_on_squid_warns(
    client: TestClient, store: Store
) -> None:
    """null: off (opt-in), no warning; true on a site with a cache that cannot purge by
    prefix: a warning naming it, in the answer and on every read; null again: none."""
    r = client.post("/api/sites", json=SITE)
    assert r.json()["query_variants"] is None
    assert not store.get_site("www").bans_query_variants(store.get_site("www").caches[0])
    squid = {"name": "sq", "driver": "squid", "address": "127.0.0.1:3128"}
    r = client.patch("/api/sites/www", json={"caches": [*SITE["caches"], squid]})
    assert not [w for w in r.json()["warnings"] if "query_variants" in w]
    r = client.patch("/api/sites/www", json={"query_variants": True})
    assert r.status_code == 200 and r.json()["query_variants"] is True, r.text
    [warning] = [w for w in r.json()["warnings"] if "query_variants" in w]
    assert "sq (squid)" in warning and "v1" not in warning
    assert warning in client.get("/api/sites/www").json()["warnings"]
    r = client.patch("/api/sites/www", json={"query_variants": None})
    assert r.json()["query_variants"] is None and store.get_site("www").query_variants is None
    assert not [w for w in r.json()["warnings"] if "query_variants" in w]
    r = client.patch("/api/sites/www", json={"query_variants": False})
    assert store.get_site("www").query_variants is False
    for bad in ("yes", 1, 0, "true", "false"):  # strict: true, false or null only
        r = client.patch("/api/sites/www", json={"query_variants": bad})
        assert r.status_code == 422, r.text
        assert store.get_site("www").query_variants is False


@pytest.mark.parametrize(
    "bad",
    [
        {"base_urls": ["ftp://example.com"]},
        {"base_urls": ["http://example.com/path"]},
        {"caches": [{"name": "x", "driver": "varnish", "address": "nowhere"}]},
        {
            "caches": [
                {"name": "x", "driver": "varnish", "address": "127.0.0.1:1"},
                {"name": "x", "driver": "nginx", "address": "127.0.0.1:2"},
            ]
        },
        {"mapping": "no-such-mapping"},
        {"origins": [{"server": "no-such-server"}]},
        {"secret": "short"},
        {"root": "../etc"},
        {"listings": "sometimes"},
        {"query_variants": "sometimes"},
        {"query_variants": "yes"},  # strict: pydantic's lax bool took "yes", 1 and "true"
        {"query_variants": 1},
        {"query_variants": "true"},
        {"caches": [{"name": "x", "driver": "varnish", "address": "::1:6081"}]},
        {"caches": [{"name": "x", "driver": "varnish", "address": "cache:99999"}]},
        {"caches": [{"name": "x", "driver": "varnish", "address": "ftp://cache:21"}]},
        {"caches": [{"name": "x", "driver": "varnish", "address": "https://cache/purge"}]},
        {"aliases": ["::1:8080"]},
    ],
)
def test_bad_sites_are_refused(client: TestClient, bad: dict) -> None:
    r = client.post("/api/sites", json={**SITE, **bad})
    assert r.status_code in (404, 422), r.text
    assert client.get("/api/sites").json() == []


def test_purge_log(client: TestClient, store: Store) -> None:
    site = client.post("/api/sites", json=SITE).json()
    item = PurgeItem(site_id=site["id"], cache="v1", url="http://example.com/static/a.txt")
    queued = store.enqueue_purges([item])
    store.finish_purges(
        [q.id for q in queued],
        [
            PurgeResult(
                item=item,
                status="refreshed",
                confirmed=True,
                attempts=1,
                at=time.time(),
                duration_ms=1.5,
            )
        ],
        [],
    )
    rows = client.get("/api/purges", params={"site": "www"}).json()
    assert [(r["url"], r["cache"], r["status"], r["confirmed"]) for r in rows] == [
        ("http://example.com/static/a.txt", "v1", "refreshed", True)
    ]
    assert store.queued_purges() == 0


def test_an_invalid_cache_address_says_how_to_write_it(client: TestClient) -> None:
    bad = {**SITE, "caches": [{"name": "x", "driver": "varnish", "address": "::1:6081"}]}
    r = client.post("/api/sites", json=bad)
    assert r.status_code == 422, r.text
    assert "cache 'x'" in r.text and "[::1]:6081" in r.text, r.text


def test_ipv6_and_https_addresses_are_accepted(client: TestClient, store: Store) -> None:
    site = {
        **SITE,
        "base_urls": ["http://[2001:db8::1]:8080"],
        "aliases": ["[::1]:8080", "www.example.com"],
        "caches": [
            {"name": "v6", "driver": "varnish", "address": "[::1]:6081"},
            {"name": "tls", "driver": "nginx", "address": "https://cache.example:8443"},
            {
                "name": "self-signed",
                "driver": "squid",
                "address": "https://10.0.0.5",
                "tls_verify": False,
            },
        ],
        "origins": [{"server": "t1", "url": "http://[fd00::7]:8000"}],
    }
    r = client.post("/api/sites", json=site)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["base_urls"] == ["http://[2001:db8::1]:8080"]
    assert [(c["address"], c["tls_verify"]) for c in body["caches"]] == [
        ("[::1]:6081", True),
        ("https://cache.example:8443", True),
        ("https://10.0.0.5", False),
    ]
    assert store.get_site("www").caches[2].tls_verify is False


def test_a_site_without_origin_urls_warns_that_confirmation_is_off(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Origins defaulted from the mapping's targets have no URL: nothing is confirmed."""
    r = client.post("/api/sites", json=SITE)
    assert r.status_code == 201, r.text
    warnings = r.json()["warnings"]
    assert len(warnings) == 1 and "confirmation is off" in warnings[0], warnings
    assert '"url"' in warnings[0]  # how to set it
    assert "confirmation is off" in caplog.text
    assert client.get("/api/sites/www").json()["warnings"] == warnings
    r = client.patch("/api/sites/www", json={"origins": [{"server": "t1", "url": "http://t1:80"}]})
    assert r.status_code == 200 and r.json()["warnings"] == [], r.text
