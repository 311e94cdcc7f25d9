"""Engine setup for the store: SQLite pragmas and write locking, PostgreSQL pooling, error mapping."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from relaysync.errors import ConfigError, StoreError

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000  # writers queue behind each other rather than fail at once
WRITE_OPTION = "relaysync_write"  # execution option marking a transaction that will write


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can take the lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A deferred transaction that later writes can fail with SQLITE_BUSY at once, without waiting
    # for busy_timeout; BEGIN IMMEDIATE takes the write lock first and waits for it properly.
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_engine(url: str) -> Engine:
    """Create the engine for a `sqlite:///...` or `postgresql+psycopg://...` URL.

    Raises:
        ConfigError: the URL names another database or cannot be parsed.
    """
    if not url.startswith(("sqlite", "postgresql")):
        raise ConfigError(f"store URL {url!r}: use sqlite:///path.db or postgresql+psycopg://...")
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url)
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigError(f"store URL {url!r}: {exc}") from exc


@contextmanager
def map_db_errors(operation: str) -> Iterator[None]:
    """Translate database driver failures into StoreError, naming the operation."""
    try:
        yield
    except SQLAlchemyError as exc:
        logger.warning("store operation failed", extra={"operation": operation})
        raise StoreError(f"{operation}: {exc}") from exc


def store_unavailable(exc: BaseException) -> bool:
    """Whether a failure is the database's (down, locked, disk full, a deadlock, the pool
    exhausted) rather than the data's: the same write may succeed later, as it is."""
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    return isinstance(cause, (OperationalError, InterfaceError, DisconnectionError, PoolTimeout))
