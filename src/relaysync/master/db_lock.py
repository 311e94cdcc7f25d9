"""The database lock: one relaysync master at a time on a store, whatever its data directory.

The data directory lock (_util/dir_lock.py) stops a second master on the same directory; two
masters with different directories on one database would still both route, purge, prune and
write the job log. So the master takes a second lock, on the database itself, right after the
data directory's and before anything is read or written (the CA, the migrations, the API):

- PostgreSQL: `pg_try_advisory_lock(MASTER_LOCK_KEY)` on a connection of its own, held open for
  the master's life. The lock is the session's: PostgreSQL drops it when the session ends, also
  when the master is killed -9 (its TCP connection closes), so a restart never meets a stale
  lock. The connection's application_name says who holds it (`relaysync master <host> pid <pid>
  data <dir>`, cut by PostgreSQL at 63 bytes); a refused master reads it from pg_locks and
  pg_stat_activity for its message. Advisory locks belong to one database: two masters on two
  databases of one server do not meet.
- SQLite: an exclusive flock on `<db>.master-lock` beside the database file (the default
  `data_dir/master.db` too: another master may be given it by URL), holding the same words.

Either way the refused master exits with DatabaseInUse (exit 21, as DataDirInUse), naming the
holder and the database (its URL without password or query).

Error handling: every LOCK_CHECK_INTERVAL_S the master asks its lock connection `SELECT 1`. If
the connection dropped (PostgreSQL restarted, a network failure, pg_terminate_backend), the lock
went with it: the master logs an error and takes the lock again on a new connection, retrying
at the same interval while PostgreSQL is unreachable (the store is failing then anyway; the job
log spools). If another master took the lock meanwhile, this one stops with DatabaseTakenOver
(exit 21): the other one is running with the lock, and two masters must not go on; an operator
restarts this one once the other is stopped. A master runs without its lock at most from the
drop until its next check, and a newcomer can start only in that window.

Resource handling: the lock connection (or the lock file's descriptor) is closed by `release`,
on a clean stop; its checks run in a worker thread, each bounded by libpq's timeouts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from relaysync._util.dir_lock import FileLock, LockHeld, lock_file
from relaysync.errors import ConfigError, DatabaseInUse, DatabaseTakenOver, StoreError
from relaysync.master.store._engine import _pg_connect_args

logger = logging.getLogger(__name__)

# pg_advisory_lock's bigint key for "the relaysync master of this database": b"rsmaster"
MASTER_LOCK_KEY = int.from_bytes(b"rsmaster", "big")
LOCK_CHECK_INTERVAL_S = 5.0  # how long a dropped lock connection can go unnoticed
SQLITE_LOCK_SUFFIX = ".master-lock"
_NAME_MAX_BYTES = 63  # PostgreSQL cuts application_name to NAMEDATALEN - 1
_RECORD = re.compile(r"relaysync master (\S+) pid (\d+) data (.*)")
_HOLDER_SQL = """
SELECT a.application_name, host(a.client_addr)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = %s AND l.objid::bigint = %s
"""  # a bigint key is (classid, objid) = (its high, low 32 bits), objsubid 1 (2: two int keys)


def holder_record(data_dir: Path) -> str:
    """Who this master is, as the lock's holder: `relaysync master <host> pid <pid> data <dir>`."""
    return f"relaysync master {socket.gethostname()} pid {os.getpid()} data {data_dir.resolve()}"


def describe_holder(
    record: str, client_address: str | None = None, *, application_name: bool = False
) -> str:
    """The holder for a message: `relaysync master (host h, pid 12, data /srv/rs)`, from what it
    wrote (`holder_record`; "" when it could not be read) and where it connected from; as an
    `application_name`, a record of 63 bytes may have been cut by PostgreSQL: `data /srv/r...`."""
    record = record.strip()
    match = _RECORD.fullmatch(record)
    if match is not None:
        cut = "..." if application_name and len(record.encode()) >= _NAME_MAX_BYTES else ""
        facts = [f"host {match[1]}", f"pid {match[2]}", f"data {match[3]}{cut}"]
    else:
        facts = [f"application_name {record!r}"] if record else []
    if client_address:
        facts.append(f"from {client_address}")
    return "relaysync master" + (f" ({', '.join(facts)})" if facts else "")


def _parsed(url: str) -> URL:
    """`url` parsed, or a one-line ConfigError that does not repeat it (it may hold a password):
    the lock is taken before the store opens, so a bad database_url is met here first."""
    if not url.startswith(("sqlite", "postgresql")):
        raise ConfigError(
            "database_url must be sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
        )
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise ConfigError(
            f"database_url cannot be parsed ({exc}); the form is sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        ) from exc


def shown_url(url: str) -> str:
    """`url` as a message may show it: no password, no query (libpq takes one there too)."""
    parsed = _parsed(url)
    plain = URL.create(
        parsed.drivername,
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
    )
    return plain.render_as_string(hide_password=False)


class DatabaseLock:
    """The held database lock: a PostgreSQL session (`conn`) or a lock file."""

    def __init__(
        self, url: str, record: str, conn: Any = None, file: FileLock | None = None
    ) -> None:
        self.url = url
        self._record = record
        self._conn = conn
        self._file = file

    async def watch(self) -> None:
        """Check the lock connection until cancelled; take the lock again if it dropped.
        Returns at once for a lock file (a flock cannot drop).

        Raises:
            DatabaseTakenOver: another master took the lock while the connection was down.
        """
        while self._conn is not None:
            await anyio.sleep(LOCK_CHECK_INTERVAL_S)
            if not await anyio.to_thread.run_sync(_alive, self._conn):
                await self._take_again()

    async def _take_again(self) -> None:
        logger.error(
            "master lock: the connection holding the lock on database %s dropped: no lock "
            "stops another master now; taking it again",
            shown_url(self.url),
        )
        self._conn.close()
        while True:
            try:
                self._conn = await anyio.to_thread.run_sync(_take_pg_lock, self.url, self._record)
            except StoreError as exc:
                logger.error("master lock: %s; retrying in %s s", exc, LOCK_CHECK_INTERVAL_S)
                await anyio.sleep(LOCK_CHECK_INTERVAL_S)
                continue
            except DatabaseInUse as exc:
                raise DatabaseTakenOver(*exc.args) from exc
            logger.warning("master lock: taken again on database %s", shown_url(self.url))
            return

    def release(self) -> None:
        """Release the lock (closing its connection or file ends it). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._file is not None:
            self._file.release()


def lock_database(url: str, data_dir: Path) -> DatabaseLock:
    """Take the master lock of the database at `url` for the master of `data_dir`.

    Raises:
        DatabaseInUse: another master holds it.
        StoreError: PostgreSQL cannot be reached.
        ConfigError: the SQLite lock file cannot be made or locked, or the URL is bad.
    """
    record = holder_record(data_dir)
    database = _parsed(url).database
    if url.startswith("postgresql"):
        return DatabaseLock(url, record, conn=_take_pg_lock(url, record))
    if not database or database == ":memory:":
        return DatabaseLock(url, record)  # a database of this process alone
    path = Path(database).resolve()
    lock_path = path.with_name(path.name + SQLITE_LOCK_SUFFIX)
    try:
        held = lock_file(lock_path, record + "\n", f"database {path}")
    except LockHeld as exc:
        raise DatabaseInUse(describe_holder(exc.record), shown_url(url)) from exc
    return DatabaseLock(url, record, file=held)


def _take_pg_lock(url: str, record: str) -> Any:
    """A new connection holding the advisory lock; one line for each way it can fail."""
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    args = _pg_connect_args(url) | {"application_name": record, "autocommit": True}
    try:
        conn = psycopg.connect(conninfo, **args)
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot connect to database {shown_url(url)} to take the master lock "
            f"({' '.join(str(exc).split())}); check database_url and that PostgreSQL runs"
        ) from exc
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (MASTER_LOCK_KEY,)).fetchone()
        if row is not None and row[0]:
            return conn
        holder = _pg_holder(conn)
    except psycopg.Error as exc:
        conn.close()
        raise StoreError(
            f"database {shown_url(url)}: cannot take the master lock ({' '.join(str(exc).split())})"
        ) from exc
    conn.close()
    raise DatabaseInUse(holder, shown_url(url))


def _pg_holder(conn: Any) -> str:
    """Who holds the lock, from pg_locks and pg_stat_activity: `relaysync master` alone when it
    let go meanwhile (or the statistics are not ours to read)."""
    key = (MASTER_LOCK_KEY >> 32, MASTER_LOCK_KEY & 0xFFFFFFFF)
    row = conn.execute(_HOLDER_SQL, key).fetchone()
    return (
        describe_holder(row[0] or "", row[1], application_name=True)
        if row is not None
        else "relaysync master"
    )


def _alive(conn: Any) -> bool:
    import psycopg

    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True
