"""Store: migrations, servers, the config epoch and tokens, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from relaysync.errors import ConfigError, NodeRemoved, NotFound
from relaysync.master.store import Store, _tokens

A, B = "a" * 64, "b" * 64


def test_migrate_from_empty_creates_every_table(empty_store_url: str) -> None:
    store = Store(empty_store_url)
    try:
        store.migrate()
        store.migrate()  # a second run is a no-op
        tables = set(sa.inspect(sa.create_engine(empty_store_url)).get_table_names())
        assert {
            "servers",
            "mappings",
            "mapping_targets",
            "changes",
            "watermarks",
            "watermark_advances",
            "exceptions",
            "catchup",
            "join_tokens",
            "api_tokens",
            "config_epoch",
            "revoked_nodes",
            "alembic_version",
        } <= tables
        assert store.epoch() == 0
    finally:
        store.close()


def test_upsert_and_get_server(store: Store) -> None:
    info = store.upsert_server(
        node_id=A, name="web-1", region="eu", group="g1", address="10.0.0.1:7001"
    )
    assert (info.name, info.region, info.group, info.state, info.capacity_weight) == (
        "web-1",
        "eu",
        "g1",
        "unknown",
        1,
    )
    assert store.get_server("web-1") == store.get_server(A) == info
    updated = store.upsert_server(
        node_id=A, name="web-1", region="us", group="g2", address="10.0.0.1:7001"
    )
    assert (updated.region, updated.group, updated.created_at) == ("us", "g2", info.created_at)
    assert [s.name for s in store.list_servers()] == ["web-1"]


def test_get_unknown_server(store: Store) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.get_server("nope")


def test_server_name_is_unique(store: Store) -> None:
    store.upsert_server(node_id=A, name="web-1", region="", group="", address="")
    with pytest.raises(ConfigError, match="already used"):
        store.upsert_server(node_id=B, name="web-1", region="", group="", address="")


def test_server_state(store: Store) -> None:
    store.upsert_server(node_id=A, name="web-1", region="", group="", address="")
    now = time.time()
    store.set_server_state(A, "up", now)
    info = store.get_server(A)
    assert (info.state, info.last_seen) == ("up", pytest.approx(now))
    with pytest.raises(ConfigError, match="state"):
        store.set_server_state(A, "sideways", now)
    with pytest.raises(NotFound):
        store.set_server_state(B, "up", now)


def test_address_change_bumps_epoch(store: Store) -> None:
    store.upsert_server(node_id=A, name="web-1", region="", group="", address="h:1")
    assert store.epoch() == 0
    store.upsert_server(node_id=A, name="web-1", region="x", group="", address="h:1")
    assert store.epoch() == 0
    store.upsert_server(node_id=A, name="web-1", region="x", group="", address="h:2")
    assert store.epoch() == 1


def test_epoch_persists_across_reopen(store_url: str) -> None:
    store = Store(store_url)
    store.migrate()
    store.upsert_server(node_id=A, name="a", region="", group="", address="h:1")
    store.upsert_server(node_id=A, name="a", region="", group="", address="h:2")
    store.close()
    again = Store(store_url)
    again.migrate()
    assert again.epoch() == 1
    again.close()


def test_join_tokens(store: Store) -> None:
    token = store.create_join_token()
    assert store.check_join_token(token)
    assert store.check_join_token(token)  # reusable: several agents join with one token
    assert not store.check_join_token(token + "x")
    assert not store.check_join_token("")


def test_join_token_expires(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # The store's clock is ours: a busy machine can neither expire it before the first check
    # nor need a sleep until it surely has.
    now_s = [time.time()]
    monkeypatch.setattr(_tokens, "time", SimpleNamespace(time=lambda: now_s[0]))
    ttl_s = 0.3
    token = store.create_join_token(ttl_s=ttl_s)
    now_s[0] += ttl_s - 0.01
    assert store.check_join_token(token)
    now_s[0] += 0.02
    assert not store.check_join_token(token)
    with pytest.raises(ConfigError):
        store.create_join_token(ttl_s=0)


def test_api_tokens(store: Store) -> None:
    token = store.create_api_token("ci")
    assert store.check_api_token(token)
    assert not store.check_api_token(token[:-1])
    with pytest.raises(ConfigError):
        store.create_api_token(" ")


def test_only_token_hashes_are_stored(store: Store, store_url: str) -> None:
    join, api = store.create_join_token(), store.create_api_token("ci")
    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        dump = repr(conn.execute(sa.text("select * from join_tokens")).all())
        dump += repr(conn.execute(sa.text("select * from api_tokens")).all())
    engine.dispose()
    assert join not in dump and api not in dump


def test_migrations_match_the_models(store: Store, store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from relaysync.master.store.models import Base

    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()
    assert diff == []


def test_bad_store_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="store URL"):
        Store("mysql://nope")


def test_delete_server(store: Store) -> None:
    store.upsert_server(node_id=A, name="a", region="", group="", address="")
    store.upsert_server(node_id=B, name="b", region="", group="", address="")
    store.create_mapping(name="m", source="a", source_path="/x", targets=[("b", "/y")])
    with pytest.raises(ConfigError, match="still used by mappings m"):
        store.delete_server("b")
    store.delete_mapping("m")
    store.delete_server("b")
    with pytest.raises(NotFound):
        store.get_server("b")
    with pytest.raises(NotFound):
        store.delete_server("b")


def test_a_deleted_server_is_revoked_and_its_name_joins_again(store: Store, store_url: str) -> None:
    store.upsert_server(node_id=A, name="web-1", region="", group="", address="")
    assert not store.is_revoked(A)
    store.delete_server("web-1")
    assert store.is_revoked(A)
    with pytest.raises(NodeRemoved, match="server 'web-1' was removed from the fleet"):
        store.register_server(A, region="", group="", address="127.0.0.1:9")
    with pytest.raises(NodeRemoved):  # nothing puts it back, not even a join's upsert
        store.upsert_server(node_id=A, name="web-1", region="", group="", address="")
    with pytest.raises(NotFound):
        store.get_server(A)
    store.upsert_server(
        node_id=B, name="web-1", region="", group="", address=""
    )  # re-added: a new key
    assert store.register_server(B, region="eu", group="g", address="10.0.0.2:7001").state == "up"
    reopened = Store(store_url)  # the revocation is durable
    try:
        assert reopened.is_revoked(A) and not reopened.is_revoked(B)
    finally:
        reopened.close()


def test_register_updates_a_joined_server_and_keeps_its_name(store: Store) -> None:
    store.upsert_server(node_id=A, name="web-1", region="", group="", address="")
    epoch = store.epoch()
    info = store.register_server(A, region="eu", group="g1", address="10.0.0.1:7001")
    assert (info.name, info.region, info.group, info.address, info.state) == (
        "web-1",
        "eu",
        "g1",
        "10.0.0.1:7001",
        "up",
    )
    assert info.last_seen is not None
    assert store.epoch() == epoch + 1  # peers address it by its address
    store.register_server(A, region="eu", group="g1", address="10.0.0.1:7001")
    assert store.epoch() == epoch + 1
    store.set_server_topology("web-1", region="us", group="g2")
    locked = store.register_server(A, region="eu", group="g1", address="10.0.0.1:7001")
    assert (locked.region, locked.group) == ("us", "g2")


def test_register_notes_the_certificates_expiry_and_keeps_it_when_unknown(store: Store) -> None:
    store.upsert_server(node_id=A, name="web-1", region="", group="", address="")
    assert store.get_server(A).cert_not_after is None  # joined, its control link not up yet
    expires = time.time() + 825 * 86400
    info = store.register_server(A, region="", group="", address="", cert_not_after=expires)
    assert info.cert_not_after == store.get_server("web-1").cert_not_after == expires
    assert store.register_server(A, region="", group="", address="").cert_not_after == expires


def test_register_refuses_a_node_that_never_joined(store: Store) -> None:
    with pytest.raises(NodeRemoved, match="does not know it"):
        store.register_server(A, region="", group="", address="127.0.0.1:9")
    assert store.list_servers() == []


def test_mapping_members(store: Store) -> None:
    for node, name in ((A, "a"), (B, "b"), ("c" * 64, "c")):
        store.upsert_server(node_id=node, name=name, region="", group="", address="")
    m = store.create_mapping(
        name="m", source="a", source_path="/x", targets=[("b", "/y"), ("c", "/z")]
    )
    n = store.create_mapping(name="n", source="b", source_path="/x", targets=[("a", "/y")])
    assert store.mapping_members() == {
        m.id: (A, frozenset({B, "c" * 64})),
        n.id: (B, frozenset({A})),
    }
