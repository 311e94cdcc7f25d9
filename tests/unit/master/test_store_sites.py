"""Store: a site's `listings` setting (migration 0014_site_listings), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from relaysync.errors import ConfigError
from relaysync.master.store import Store
from relaysync.purge.jobs import PurgeItem
from tests.unit.master.test_store_ids import _migrate_to, _old_site, _old_sites

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
