"""One master per PostgreSQL database: a session advisory lock, its holder named from
pg_stat_activity, and a lock connection that drops is taken again, or the master stops."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from tests.conftest import _create_database, _drop_database

from relaysync.errors import DatabaseInUse, DatabaseTakenOver, StoreError
from relaysync.master import db_lock
from relaysync.master.db_lock import MASTER_LOCK_KEY, lock_database
from relaysync.testing.cluster import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

WAIT_S = 30.0
OTHER = "relaysync master otherhost pid 4242 data /srv/other"  # another master's application_name


@pytest.fixture
def url(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"dblock_{os.getpid()}_{request.node.name[:30].lower()}"
    yield _create_database(postgres_url, name)
    _drop_database(postgres_url, name)


def _connect(url: str, application_name: str = "test") -> Any:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(plain, autocommit=True, application_name=application_name)


def _lock_backends(url: str) -> list[tuple[int, str]]:
    """(pid, application_name) of the sessions holding the master lock of `url`'s database."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a "
            "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            "AND a.datname = current_database() "
            "AND (l.classid::bigint << 32 | l.objid::bigint) = %s",
            (MASTER_LOCK_KEY,),
        ).fetchall()
    return [(int(pid), str(name)) for pid, name in rows]


def test_a_second_master_is_refused_naming_the_first(url: str) -> None:
    """Data directories are only named here (nothing is made in them): short ones, so that the
    holder's application_name is whole (PostgreSQL keeps 63 bytes)."""
    first = lock_database(url, Path("/d1"))
    try:
        with pytest.raises(DatabaseInUse) as caught:
            lock_database(url, Path("/d2"))
        holder = f"host {socket.gethostname()}, pid {os.getpid()}, data /d1"
        assert str(caught.value) == (
            f"another relaysync master ({holder}, from 127.0.0.1) is using database {url}; "
            "run one master per database: stop it first, or give this master its own database_url"
        )
        names = [name for _, name in _lock_backends(url)]
        assert names == [f"relaysync master {socket.gethostname()} pid {os.getpid()} data /d1"]
    finally:
        first.release()
    assert _lock_backends(url) == []  # a clean stop lets go at once
    lock_database(url, Path("/d2")).release()


def test_databases_of_one_server_do_not_meet(postgres_url: str, url: str, tmp_path: Path) -> None:
    other = _create_database(postgres_url, f"dblock_{os.getpid()}_other")
    try:
        first = lock_database(url, tmp_path / "d1")
        lock_database(other, tmp_path / "d2").release()
        first.release()
    finally:
        _drop_database(postgres_url, f"dblock_{os.getpid()}_other")


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError) as caught:
        lock_database(f"postgresql+psycopg://u:pw@127.0.0.1:{port}/x", tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "pw" not in message
    assert f"cannot connect to database postgresql+psycopg://u@127.0.0.1:{port}/x" in message


async def test_a_dropped_lock_connection_is_taken_again(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(db_lock, "LOCK_CHECK_INTERVAL_S", 0.1)
    lock = lock_database(url, tmp_path / "d1")
    try:
        [(backend, _)] = _lock_backends(url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lock.watch)
            with _connect(url) as admin:  # as PostgreSQL's restart or a network failure would
                admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
            taken = await anyio.to_thread.run_sync(
                lambda: wait_until(
                    lambda: [b for b, _ in _lock_backends(url) if b != backend],
                    timeout_s=WAIT_S,
                    what="the lock taken again",
                )
            )
            assert len(taken) == 1
            tg.cancel_scope.cancel()
        assert "connection holding the lock on database" in caplog.text
        assert "taken again" in caplog.text
    finally:
        lock.release()
    assert _lock_backends(url) == []


async def test_a_lock_another_master_took_meanwhile_stops_this_one(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_lock, "LOCK_CHECK_INTERVAL_S", 0.1)
    lock = lock_database(url, tmp_path / "d1")
    [(backend, _)] = _lock_backends(url)
    with _connect(url, OTHER) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (backend,))
        # waits until the killed session let go, before this master's next check can see it
        other.execute("SELECT pg_advisory_lock(%s)", (MASTER_LOCK_KEY,))
        with pytest.raises(DatabaseTakenOver) as caught:
            with anyio.fail_after(WAIT_S):
                await lock.watch()
        lock.release()
    assert str(caught.value).startswith(
        "another relaysync master (host otherhost, pid 4242, data /srv/other, from 127.0.0.1) "
        "took database postgresql+psycopg://"
    )
