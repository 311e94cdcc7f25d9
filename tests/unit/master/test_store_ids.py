"""Store: ids that key state outside their rows are never reused, on SQLite (AUTOINCREMENT, migration
0013_sqlite_ids) as on PostgreSQL (sequences), and the migration keeps every row and id."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from relaysync.master.store import Store
from relaysync.master.store._engine import make_engine
from relaysync.master.store.store import MIGRATIONS_DIR
from relaysync.purge.jobs import PurgeItem, PurgeResult

SRC, T1 = "a" * 64, "b" * 64
BEFORE = "0012_revoked_nodes"
# `sites` as it is at BEFORE: today's Site model has columns added since (0014_site_listings), so
# the old rows are written and read with SQL that names these only.
_JSON = frozenset({"base_urls", "aliases", "index_files", "caches", "origins"})
OLD_SITES = sa.table(
    "sites",
    *(
        sa.column(name, sa.JSON() if name in _JSON else None)
        for name in (
            "id",
            "name",
            "provider_id",
            "mapping_id",
            "root",
            "base_urls",
            "aliases",
            "path_prefix",
            "index_files",
            "caches",
            "origins",
            "secret",
            "created_at",
            "updated_at",
        )
    ),
)
OLD_CACHE = {  # as the store checked and kept it
    "name": "c1",
    "driver": "http",
    "address": "127.0.0.1:9",
    "refresh": True,
    "method": "PURGE",
    "path_template": "{path}",
    "headers": {},
}
PROVIDERS = sa.table("providers", sa.column("id"), sa.column("name"), sa.column("created_at"))


def _migrate_to(store_url: str, revision: str, *, down: bool = False) -> None:
    """Run the migrations to `revision` on a connection like the Store's (foreign keys on)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)
    finally:
        engine.dispose()


@pytest.fixture
def old_store(empty_store_url: str) -> Iterator[Store]:
    """A Store on a database at the revision before 0013_sqlite_ids."""
    _migrate_to(empty_store_url, BEFORE)
    store = Store(empty_store_url)
    try:
        yield store
    finally:
        store.close()


def _old_site(store_url: str, name: str) -> int:
    """Insert a site (provider "acme") with the columns `sites` has at BEFORE; return its id."""
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            provider = conn.scalar(sa.select(PROVIDERS.c.id).where(PROVIDERS.c.name == "acme"))
            if provider is None:
                provider = conn.execute(
                    sa.insert(PROVIDERS)
                    .values(name="acme", created_at=0.0)
                    .returning(PROVIDERS.c.id)
                ).scalar_one()
            return int(
                conn.execute(
                    sa.insert(OLD_SITES)
                    .values(
                        name=name,
                        provider_id=provider,
                        mapping_id=None,
                        root="",
                        base_urls=["http://www.example.com"],
                        aliases=[],
                        path_prefix="/",
                        index_files=["index.html"],
                        caches=[OLD_CACHE],
                        origins=[],
                        secret=f"secret-of-{name}-0123456789",
                        created_at=time.time(),
                        updated_at=time.time(),
                    )
                    .returning(OLD_SITES.c.id)
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _old_sites(store_url: str) -> list[Any]:
    """The sites' rows, by id, in the columns `sites` has at BEFORE."""
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(OLD_SITES).order_by(OLD_SITES.c.id)).all())
    finally:
        engine.dispose()


def _populate(store: Store, store_url: str) -> int:
    """Two of each kind of row whose id matters, a site's queued and logged purges; the mapping id."""
    now = time.time()
    store.upsert_server(node_id=SRC, name="src", region="", group="", address="")
    store.upsert_server(node_id=T1, name="t1", region="", group="", address="")
    m = store.create_mapping(name="m", source="src", source_path="/srv/m", targets=[("t1", "/m")])
    mon = store.monitoring
    for n in (1, 2):
        mon.create_threshold(scope="all", metric=f"metric{n}", operator=">", value=n)
        mon.create_probe(name=f"p{n}", kind="tcp", host="127.0.0.1", port=n)
        mon.create_channel(name=f"c{n}", kind="console", config={})
        mon.fire_alert(
            key=f"probe:{n}", server="", kind="probe", subject="p", value=None, message="", now=now
        )
        store.routing.start_recovery(m.id, T1, "manual", now)
        site_id = _old_site(store_url, f"s{n}")
        items = [
            PurgeItem(site_id=site_id, cache="c1", url=f"http://www.example.com/{i}")
            for i in (1, 2)
        ]
        done, _ = store.enqueue_purges(items)
        result = PurgeResult(
            item=items[0], status="refreshed", confirmed=None, attempts=1, at=now, duration_ms=1.0
        )
        store.finish_purges([done.id], [result], [])
    return m.id


def _snapshot(store: Store, store_url: str, mapping_id: int) -> dict[str, Any]:
    return {
        "thresholds": store.monitoring.list_thresholds(),
        "probes": store.monitoring.list_probes(),
        "channels": store.monitoring.list_channels(),
        "alerts": store.monitoring.list_alerts(),
        "recoveries": store.routing.recoveries(mapping_id),
        "sites": _old_sites(store_url),
        "queue": store.pending_purges(),
        "log": store.purge_log(),
    }


def test_the_migration_keeps_rows_and_ids_and_new_ids_are_never_reused(
    old_store: Store, empty_store_url: str
) -> None:
    mapping_id = _populate(old_store, empty_store_url)
    before = _snapshot(old_store, empty_store_url, mapping_id)
    assert all(len(rows) == 2 for rows in before.values()), before

    old_store.migrate()  # to 0013_sqlite_ids and on, with foreign keys on, as the master runs it
    assert (
        _snapshot(old_store, empty_store_url, mapping_id) == before
    )  # every row, id and child row kept

    mon = old_store.monitoring
    newest = max(t.id for t in before["thresholds"])
    mon.delete_threshold(newest)
    assert mon.create_threshold(scope="all", metric="m3", operator=">", value=3).id > newest
    newest = max(p.id for p in before["probes"])
    mon.delete_probe(newest)
    assert mon.create_probe(name="p3", kind="tcp", host="127.0.0.1", port=3).id > newest
    newest = max(c.id for c in before["channels"])
    mon.delete_channel(newest)
    assert mon.create_channel(name="c3", kind="console", config={}).id > newest
    newest = max(s.id for s in before["sites"])
    old_store.delete_site(newest)
    again = old_store.create_site(
        name="s3", provider="acme", mapping=None, root="", base_urls=["http://x.example"]
    )
    assert again.id > newest
    newest = max(q.id for q in old_store.pending_purges())
    old_store.finish_purges([newest], [], [])
    (queued,) = old_store.enqueue_purges(
        [PurgeItem(site_id=again.id, cache="c1", url="http://x.example/")]
    )
    assert queued.id > newest
    newest = max(j.id for j in before["recoveries"])
    old_store.delete_mapping(mapping_id)  # its recovery jobs go with it
    m2 = old_store.create_mapping(
        name="m2", source="src", source_path="/srv/m2", targets=[("t1", "/m2")]
    )
    assert m2.id > mapping_id  # mappings: config_epoch.last_mapping_id (0007_mapping_ids)
    assert old_store.routing.start_recovery(m2.id, T1, "manual", time.time()).id > newest
    engine = sa.create_engine(empty_store_url)
    try:
        with engine.begin() as conn:
            newest = conn.execute(sa.text("SELECT MAX(id) FROM alerts")).scalar_one()
            conn.execute(sa.text("DELETE FROM alerts WHERE id = :id"), {"id": newest})
    finally:
        engine.dispose()
    alert, _ = mon.fire_alert(
        key="probe:9", server="", kind="probe", subject="p", value=None, message="", now=0.0
    )
    assert alert.id > newest


def test_the_migration_goes_back_keeping_rows(old_store: Store, empty_store_url: str) -> None:
    mapping_id = _populate(old_store, empty_store_url)
    old_store.migrate()
    after = _snapshot(old_store, empty_store_url, mapping_id)
    _migrate_to(empty_store_url, BEFORE, down=True)
    assert _snapshot(old_store, empty_store_url, mapping_id) == after
