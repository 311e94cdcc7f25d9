"""Store: a site's `listings` setting (migration 0014_site_listings) and its caches'
`accept_encodings`, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from relaysync.errors import ConfigError
from relaysync.master.store import Store
from relaysync.master.store._engine import make_engine
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.site import DEFAULT_ACCEPT_ENCODINGS
from tests.unit.master.test_store_ids import OLD_SITES, _migrate_to, _old_site, _old_sites

BEFORE = "0013_sqlite_ids"


def _create(store: Store, **extra: object) -> None:
    store.create_site(
        name="www", provider="acme", mapping=None, base_urls=["http://x.example"], **extra
    )


def test_listings_are_off_unless_set(store: Store) -> None:
    _create(store)
    assert store.get_site("www").listings is False
    assert store.update_site("www", listings=True).listings is True
    assert store.update_site("www", aliases=["y.example"]).listings is True  # kept
    assert store.list_sites()[0].listings is True


def test_listings_must_be_a_bool(store: Store) -> None:
    with pytest.raises(ConfigError, match="listings must be true or false"):
        _create(store, listings="yes")


def test_the_migration_turns_listings_off_and_goes_back_keeping_rows(
    empty_store_url: str,
) -> None:
    _migrate_to(empty_store_url, BEFORE)
    site_id = _old_site(empty_store_url, "old")
    store = Store(empty_store_url)
    try:
        store.enqueue_purges([PurgeItem(site_id=site_id, cache="c1", url="http://x.example/a")])
        before = _old_sites(empty_store_url)
        store.migrate()
        assert store.get_site("old").listings is False  # planned as before
        store.update_site("old", listings=True)
        _migrate_to(empty_store_url, BEFORE, down=True)
        # the column is dropped in place: on SQLite a rebuild of `sites` would cascade its DROP
        # to the site's queued purges
        assert [r[1:12] for r in _old_sites(empty_store_url)] == [r[1:12] for r in before]
        assert store.queued_purges() == 1
    finally:
        store.close()


def _raw_caches(store_url: str) -> dict[str, dict[str, object]]:
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(OLD_SITES.c.caches)).all()
    finally:
        engine.dispose()
    return {c["name"]: c for row in rows for c in row[0]}


def test_a_caches_accept_encodings_is_kept_only_when_not_its_drivers_default(
    store: Store, store_url: str
) -> None:
    """Rows saved before the setting (or with the default) stay byte for byte; the API and
    the purger see the default either way."""
    caches = [
        {"name": "n1", "driver": "nginx", "address": "127.0.0.1:1"},
        {"name": "n2", "driver": "nginx", "address": "127.0.0.1:2", "accept_encodings": None},
        {
            "name": "n3",
            "driver": "nginx",
            "address": "127.0.0.1:3",
            "accept_encodings": list(DEFAULT_ACCEPT_ENCODINGS["nginx"]),
        },
        {
            "name": "s1",
            "driver": "squid",
            "address": "127.0.0.1:4",
            "accept_encodings": ["", "gzip"],
        },
        {
            "name": "v1",  # nginx's default is not Varnish's: kept
            "driver": "varnish",
            "address": "127.0.0.1:5",
            "accept_encodings": list(DEFAULT_ACCEPT_ENCODINGS["nginx"]),
        },
    ]
    _create(store, caches=caches)
    raw = _raw_caches(store_url)
    assert [n for n, c in raw.items() if "accept_encodings" in c] == ["s1", "v1"]
    assert raw["s1"]["accept_encodings"] == ["", "gzip"]
    spec = {c.name: c.encodings for c in store.get_site("www").caches}
    assert spec["n1"] == spec["n2"] == spec["n3"] == DEFAULT_ACCEPT_ENCODINGS["nginx"]
    assert spec["s1"] == ("", "gzip")
    assert spec["v1"] == DEFAULT_ACCEPT_ENCODINGS["nginx"]


def test_accept_encodings_must_be_distinct_header_values(store: Store) -> None:
    cache = {"name": "n1", "driver": "nginx", "address": "127.0.0.1:1"}
    for bad in (["gzip", " gzip"], "gzip", ["gzip\r\nX: 1"], [1]):
        with pytest.raises(ConfigError, match="accept_encodings"):
            _create(store, caches=[{**cache, "accept_encodings": bad}])


def test_query_variants_are_the_default_unless_set(store: Store) -> None:
    _create(store)
    assert store.get_site("www").query_variants is None  # off (opt-in)
    assert store.update_site("www", query_variants=False).query_variants is False
    assert store.update_site("www", aliases=["y.example"]).query_variants is False  # kept
    assert store.update_site("www", query_variants=None).query_variants is None
    with pytest.raises(ConfigError, match="query_variants must be true, false or null"):
        store.update_site("www", query_variants="yes")


def test_the_query_variants_migration_keeps_rows_both_ways(empty_store_url: str) -> None:
    before = "0018_token_scopes"
    _migrate_to(empty_store_url, before)
    site_id = _old_site(empty_store_url, "old")
    store = Store(empty_store_url)
    try:
        store.enqueue_purges([PurgeItem(site_id=site_id, cache="c1", url="http://x.example/a")])
        rows = _old_sites(empty_store_url)
        store.migrate()
        assert store.get_site("old").query_variants is None  # the default: off
        store.update_site("old", query_variants=True)
        _migrate_to(empty_store_url, before, down=True)
        assert [r[1:12] for r in _old_sites(empty_store_url)] == [r[1:12] for r in rows]
        assert store.queued_purges() == 1
    finally:
        store.close()
