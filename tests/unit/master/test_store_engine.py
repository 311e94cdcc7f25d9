"""Store engine settings: a committed write outlives a power loss, and no call waits without end.

- Agents drop a commit report once the master says the job log took it, and an API call
  answered "done" must stay done, so every SQLite connection commits with synchronous=FULL (the
  WAL fsynced at each commit; NORMAL, SQLite's WAL default, may lose the last commits on a power
  loss). A power loss cannot be staged here: the setting each connection commits with decides
  it, read back from SQLite itself.
- A write blocked by a lock held elsewhere fails with a StoreError the job log takes as "store
  unavailable" (it spools), after the lock timeout: on PostgreSQL it waited for good.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from relaysync.errors import ConfigError, StoreError
from relaysync.master.store import Store, _engine
from relaysync.master.store._engine import make_engine, store_unavailable
from tests._store_locks import table_locked

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
LOCK_TIMEOUT_MS = 300
GIVE_UP_S = 30.0  # far beyond the lock timeout: the old code's PostgreSQL write waited for good


def test_every_sqlite_connection_commits_durably(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'master.db'}")
    try:
        store.migrate()
        store.bump_epoch()  # a write transaction, on a write session's connection
        with store._write("check") as session:
            assert session.execute(sa.text("PRAGMA synchronous")).scalar() == FULL
        with store._read("check") as session:
            assert session.execute(sa.text("PRAGMA synchronous")).scalar() == FULL
            assert session.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        store.close()


def test_a_write_behind_a_lock_fails_in_bounded_time(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_engine, "SQLITE_BUSY_TIMEOUT_MS", LOCK_TIMEOUT_MS)
    monkeypatch.setattr(_engine, "PG_LOCK_TIMEOUT_MS", LOCK_TIMEOUT_MS)
    store = Store(store_url)
    outcome: list[BaseException | None] = []
    worker = threading.Thread(target=lambda: _write(store, outcome), daemon=True)
    try:
        with table_locked(store_url, "config_epoch"):
            started = time.monotonic()
            worker.start()
            worker.join(GIVE_UP_S)
            waited = time.monotonic() - started
            assert not worker.is_alive(), f"a write behind a lock still waits after {waited:.0f} s"
        assert len(outcome) == 1 and isinstance(outcome[0], StoreError), outcome
        assert store_unavailable(outcome[0])  # the job log spools rather than drops
        store.bump_epoch()  # the lock gone, the store works again
    finally:
        if worker.ident is not None:
            worker.join(GIVE_UP_S)
        store.close()


def _write(store: Store, outcome: list[BaseException | None]) -> None:
    try:
        store.bump_epoch()
        outcome.append(None)
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        outcome.append(exc)


def test_the_urls_own_postgresql_settings_win() -> None:
    args = _engine._pg_connect_args("postgresql+psycopg://u@h/db?connect_timeout=3")
    assert "connect_timeout" not in args  # libpq takes the URL's 3
    assert "lock_timeout=" in args["options"] and args["tcp_user_timeout"] > 0


def test_a_store_error_names_neither_the_sql_nor_its_parameters(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A StoreError (an API client's 503 detail, the master's error log) carried SQLAlchemy's
    whole text: the statement and its parameters, a new site secret among them. It names the
    operation now; the statement is logged once, here, with its parameters hidden."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as err:
        with store._write("check") as session:
            session.execute(
                sa.text("INSERT INTO no_such_table (secret) VALUES (:secret)"),
                {"secret": "TOP-SECRET-VALUE"},
            )
    assert "check: " in str(err.value) and "INSERT" not in str(err.value)
    assert "TOP-SECRET-VALUE" not in str(err.value)
    assert "no_such_table" in caplog.text and "TOP-SECRET-VALUE" not in caplog.text


@pytest.mark.parametrize("url", ["mysql://u:s3cret@h/db", "postgresql://u:s3cret@h:notaport/db"])
def test_a_refused_store_url_is_not_echoed_with_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match="store URL") as refused:
        make_engine(url)
    assert "s3cret" not in str(refused.value)


def test_a_read_only_postgresql_is_the_databases_failure_not_the_datas(store: Store) -> None:
    """A failed-over primary, a hot standby, a managed PostgreSQL gone read-only on a full disk:
    psycopg raises InternalError (SQLSTATE 25006), which was taken for the data's fault, so the
    job log split its batch and dropped every record instead of spooling it."""
    if store._engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's read-only transactions")
    with pytest.raises(StoreError) as err:
        with store._write("check") as session:
            session.execute(sa.text("SET TRANSACTION READ ONLY"))
            session.execute(sa.text("UPDATE config_epoch SET epoch = epoch + 1"))
    assert store_unavailable(err.value)
    with pytest.raises(StoreError) as bad:  # the data's fault stays the data's
        with store._write("check") as session:
            session.execute(sa.text("SELECT 1 / 0"))
    assert not store_unavailable(bad.value)
