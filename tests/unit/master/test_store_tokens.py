"""Store: listing and revoking join and API tokens, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from relaysync.auth.tokens import TokenScope, hash_token
from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import Store
from tests.unit.master.test_store_ids import _migrate_to


def test_join_tokens_are_listed_by_hash_prefix_and_revoked(store: Store) -> None:
    forever, day = store.create_join_token(), store.create_join_token(ttl_s=86_400)
    listed = store.list_join_tokens()
    assert [t.id for t in listed] == [hash_token(forever)[:12], hash_token(day)[:12]]
    assert listed[0].expires_at is None and not listed[0].expired
    assert listed[1].expires_at is not None and listed[1].expires_at > time.time()
    assert not listed[1].expired
    assert forever not in repr(listed) and day not in repr(listed)
    assert store.join_token_id(day) == listed[1].id

    revoked = store.revoke_join_token(listed[0].id.upper())  # hex in any case
    assert revoked.id == listed[0].id
    assert not store.check_join_token(forever)  # refused at once
    assert store.check_join_token(day)  # the other one still works
    assert [t.id for t in store.list_join_tokens()] == [listed[1].id]
    with pytest.raises(NotFound, match="Join token"):
        store.revoke_join_token(listed[0].id)
    with pytest.raises(NotFound):
        store.join_token_id(forever)


@pytest.mark.parametrize("bad", ["", "abc", "g" * 12, "0" * 65, "01234567890 "])
def test_a_join_token_id_must_be_12_to_64_hex_characters(store: Store, bad: str) -> None:
    store.create_join_token()
    with pytest.raises(ConfigError, match="12 to 64 hex"):
        store.revoke_join_token(bad)


def test_expired_join_tokens_are_kept_and_listed_as_expired(store: Store) -> None:
    ttl_s = 0.05
    token = store.create_join_token(ttl_s=ttl_s)
    time.sleep(ttl_s + 0.05)
    (listed,) = store.list_join_tokens()
    assert listed.expired and not store.check_join_token(token)
    store.revoke_join_token(listed.id)
    assert store.list_join_tokens() == []


def test_join_token_ids_that_share_a_prefix_grow_until_unique(store: Store, store_url: str) -> None:
    """Twelve hex characters collide once in 2^48: the listing then shows longer ids, and the
    shared prefix is refused as ambiguous instead of revoking either token."""
    shared = "ab" * 6
    hashes = [shared + "0" * 52, shared + "1" * 52, "cd" * 32]
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        for h in hashes:
            conn.execute(
                sa.text(
                    "insert into join_tokens (token_hash, created_at, expires_at) "
                    "values (:h, 1.0, null)"
                ),
                {"h": h},
            )
    engine.dispose()
    assert sorted(t.id for t in store.list_join_tokens()) == [shared + "0", shared + "1", "cd" * 6]
    with pytest.raises(ConfigError, match="matches 2 join tokens"):
        store.revoke_join_token(shared)
    store.revoke_join_token(shared + "1")
    assert sorted(t.id for t in store.list_join_tokens()) == [shared, "cd" * 6]


def test_api_tokens_are_listed_and_revoked_by_id(store: Store) -> None:
    ci, bob = store.create_api_token("ci"), store.create_api_token("bob's laptop")
    listed = store.list_api_tokens()
    assert [t.name for t in listed] == ["ci", "bob's laptop"]
    assert listed[0].id < listed[1].id and all(t.created_at > 0 for t in listed)
    assert ci not in repr(listed) and bob not in repr(listed)
    assert store.api_token_id(bob) == listed[1].id

    assert store.revoke_api_token(listed[1].id).name == "bob's laptop"
    assert not store.check_api_token(bob)  # refused at once
    assert store.check_api_token(ci)
    assert [t.name for t in store.list_api_tokens()] == ["ci"]
    with pytest.raises(NotFound, match="API token"):
        store.revoke_api_token(listed[1].id)
    with pytest.raises(NotFound):
        store.api_token_id(bob)


def test_a_revoked_api_tokens_id_is_never_given_again(store: Store) -> None:
    """A retried `token revoke api ID` must not revoke a token created meanwhile."""
    store.create_api_token("ci")
    newest = store.api_token_id(store.create_api_token("bob"))
    store.revoke_api_token(newest)
    assert store.api_token_id(store.create_api_token("carol")) > newest
    with pytest.raises(NotFound):
        store.revoke_api_token(newest)


def test_the_api_token_ids_migration_keeps_tokens(empty_store_url: str) -> None:
    """0015_api_token_ids rebuilds api_tokens on SQLite (AUTOINCREMENT): rows, ids and hashes kept.

    Rows are written and read as SQL: the models are those of the newest revision."""
    _migrate_to(empty_store_url, "0013_sqlite_ids")
    _insert_old_tokens(empty_store_url, {"rsa_ci": "ci", "rsa_bob": "bob"})
    store = Store(empty_store_url)
    try:
        store.migrate()
        before = [(t.id, t.name) for t in store.list_api_tokens()]
        assert [name for _, name in before] == ["ci", "bob"]
        assert all(store.check_api_token(t) for t in ("rsa_ci", "rsa_bob"))
        store.revoke_api_token(before[-1][0])
        assert store.api_token_id(store.create_api_token("carol")) > before[-1][0]
        after = [(t.id, t.name) for t in store.list_api_tokens()]
        _migrate_to(empty_store_url, "0013_sqlite_ids", down=True)
        _assert_rows_and_autoincrement(empty_store_url, after, autoincrement=False)
    finally:
        store.close()


API_TOKENS = sa.table(
    "api_tokens",
    sa.column("id"),
    sa.column("name"),
    sa.column("token_hash"),
    sa.column("created_at"),
)
JOIN_TOKENS = sa.table("join_tokens", sa.column("token_hash"), sa.column("created_at"))


def _insert_old_tokens(url: str, api: dict[str, str], join: tuple[str, ...] = ()) -> None:
    """Store tokens as an older release did, with only the columns it had."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for token, name in api.items():
                row = {"name": name, "token_hash": hash_token(token), "created_at": 1.0}
                conn.execute(sa.insert(API_TOKENS).values(**row))
            for token in join:
                conn.execute(
                    sa.insert(JOIN_TOKENS).values(token_hash=hash_token(token), created_at=1.0)
                )
    finally:
        engine.dispose()


def test_the_token_scopes_migration_keeps_stored_tokens_admin(empty_store_url: str) -> None:
    """0018_token_scopes: tokens stored before scopes keep doing what they did (admin), with no
    creator known; new ones get theirs; going back keeps the rows (and SQLite's AUTOINCREMENT)."""
    _migrate_to(empty_store_url, "0017_target_policy")
    _insert_old_tokens(empty_store_url, {"rsa_old": "ci"}, ("rsj_old",))
    store = Store(empty_store_url)
    try:
        store.migrate()
        found = store.find_api_token("rsa_old")
        assert found is not None and found.scope == "admin" and found.created_by is None
        assert [t.created_by for t in store.list_join_tokens()] == [None]
        read = store.create_api_token("grafana", scope=TokenScope.READ, created_by="admin")
        assert [(t.name, t.scope, t.created_by) for t in store.list_api_tokens()] == [
            ("ci", "admin", None),
            ("grafana", "read", "admin"),
        ]
        _migrate_to(empty_store_url, "0017_target_policy", down=True)
        _assert_rows_and_autoincrement(empty_store_url, [(1, "ci"), (2, "grafana")])
        store.migrate()
        assert store.check_api_token(read) and store.check_api_token("rsa_old")
    finally:
        store.close()


def _assert_rows_and_autoincrement(
    url: str, rows: list[tuple[int, str]], *, autoincrement: bool = True
) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(API_TOKENS.c.id, API_TOKENS.c.name).order_by(API_TOKENS.c.id)
            assert [tuple(r) for r in conn.execute(query)] == rows
            if engine.dialect.name == "sqlite":
                ddl = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name='api_tokens'"))
                assert ("AUTOINCREMENT" in ddl.scalar_one()) is autoincrement
    finally:
        engine.dispose()
