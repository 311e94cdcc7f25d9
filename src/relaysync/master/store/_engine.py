"""Engine setup for the store: SQLite pragmas and write locking, PostgreSQL pooling, error mapping."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Float,
    UpdateBase,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from relaysync.errors import ConfigError, StoreError

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000  # writers queue behind each other rather than fail at once
# PostgreSQL: no call on the store waits without end. A lock held elsewhere fails a statement
# after as long as SQLite's busy timeout (the job log then spools; an API call answers 503); a
# statement stuck for another reason is cancelled by the server; a server gone from the network
# (no RST: a partition, a powered-off host) is given up by the kernel (unacknowledged data,
# keepalives) instead of a read that never returns.
PG_CONNECT_TIMEOUT_S = 10
PG_LOCK_TIMEOUT_MS = SQLITE_BUSY_TIMEOUT_MS
PG_STATEMENT_TIMEOUT_MS = 300_000  # a backstop: the longest statement (a migration) is far shorter
PG_TCP_USER_TIMEOUT_MS = 30_000
WRITE_OPTION = "relaysync_write"  # execution option marking a transaction that will write
# id(statement) -> (the statement, kept so that its id stays its own; its SQLite text, or None
# where the driver cannot take its rows as they are)
_DRIVER_SQL: dict[tuple[int, tuple[str, ...]], tuple[UpdateBase, str | None]] = {}


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can take the lock up front.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit is on disk when it returns (NORMAL outlives a kill, not a power loss).
        # Agents drop a commit report once the job log took it, and an API write answered
        # "done" must stay done: a WAL fsync per write transaction (about 0.25 ms here; the job
        # log writes a batch per transaction).
        cursor.execute("PRAGMA synchronous=FULL")
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
        raise ConfigError(
            f"store URL {_hidden(url)!r}: use sqlite:///path.db or postgresql+psycopg://..."
        )
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, hide_parameters=True)
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
            return engine
        return create_engine(
            url, hide_parameters=True, pool_pre_ping=True, connect_args=_pg_connect_args(url)
        )
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigError(f"store URL {_hidden(url)!r}: {exc}") from exc


def _hidden(url: str) -> str:
    """`url` for a message: its password masked (an error message goes to logs and terminals)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(unparsable)"


def _pg_connect_args(url: str) -> dict[str, Any]:
    """libpq settings that bound every wait on PostgreSQL (see PG_*); one the operator set in
    the URL's query (`?connect_timeout=3`, `?options=...`) is theirs and stays as it is."""
    ours: dict[str, Any] = {
        "connect_timeout": PG_CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": PG_TCP_USER_TIMEOUT_MS,
        "options": (
            f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
        ),
    }
    given = make_url(url).query
    return {key: value for key, value in ours.items() if key not in given}


def execute_rows(
    session: Session, stmt: UpdateBase, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Execute `stmt` (a module-level constant: its text is cached) once per row, in the
    session's transaction; each row holds the values of `columns`, in that order.

    On SQLite the rows go to the driver's executemany as they are when the statement's
    parameters are exactly `columns` and none of their types converts a value: SQLAlchemy's
    work per row (a dict, its parameters built from the compiled statement) cost about as much
    as SQLite's own inserts (10,000 change rows: 40 of 85 ms). Elsewhere, or for any other
    statement, they go through SQLAlchemy as dicts. Errors are SQLAlchemy's either way.
    """
    if not rows:
        return
    sql = _driver_sql(session, stmt, columns)
    if sql is None:
        session.execute(stmt, [dict(zip(columns, row, strict=True)) for row in rows])
    else:
        session.connection().exec_driver_sql(sql, list(rows))


def _driver_sql(session: Session, stmt: UpdateBase, columns: Sequence[str]) -> str | None:
    dialect = session.get_bind().dialect
    if dialect.name != "sqlite":
        return None
    key = (id(stmt), tuple(columns))  # the same statement given its columns in another order
    cached = _DRIVER_SQL.get(key)
    if cached is not None and cached[0] is stmt:
        return cached[1]
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    names = list(compiled.positiontup or ())
    plain = names == list(columns) and all(
        _as_is(compiled.binds[name].type, dialect) for name in names
    )
    sql = str(compiled) if plain and dialect.paramstyle == "qmark" else None
    _DRIVER_SQL[key] = (stmt, sql)
    return sql


def _as_is(type_: TypeEngine[Any], dialect: Dialect) -> bool:
    """Whether SQLite takes a value of this type from the driver as SQLAlchemy would pass it:
    no conversion, or a Float's float(), which the column's REAL affinity does for an int."""
    return type_.bind_processor(dialect) is None or (
        isinstance(type_, Float) and not type_.asdecimal
    )


@contextmanager
def map_db_errors(operation: str) -> Iterator[None]:
    """Translate database driver failures into StoreError, naming the operation.

    The driver's text (the SQL; its parameters are hidden by the engine's `hide_parameters`,
    as they may hold secrets) is logged here, once; the StoreError, which API clients and the
    callers' logs see, names only the operation and the kind of failure.
    """
    try:
        yield
    except SQLAlchemyError as exc:
        logger.warning(
            "store operation failed: %s",
            exc,
            extra={"operation": operation, "error_type": type(exc).__name__},
        )
        raise StoreError(
            f"{operation}: the database failed ({type(exc).__name__}); "
            "the master's log has the details"
        ) from exc


# SQLSTATE classes that are the database's state, not the data's: connection (08), transaction
# state (25: 25006, a read-only primary after a fail-over or a standby), rollback (40:
# serialization, deadlock), resources (53: disk full, out of memory, connections), object state
# (55: a lock not available), operator intervention (57: shutdown, a statement timeout), system
# (58: I/O). psycopg raises some of them as InternalError, not OperationalError.
_DATABASE_STATES = frozenset({"08", "25", "40", "53", "55", "57", "58"})


def store_unavailable(exc: BaseException) -> bool:
    """Whether a failure is the database's (down, locked, read-only, disk full, a deadlock, the
    pool exhausted) rather than the data's: the same write may succeed later, as it is."""
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    if isinstance(cause, (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)):
        return True
    sqlstate = getattr(getattr(cause, "orig", None), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _DATABASE_STATES
