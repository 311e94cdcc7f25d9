"""A second master with its own data directory on a running master's database (PostgreSQL, or a
SQLite file outside both directories) exits at once with what to do: before, both ran routers,
purgers, retention and the job log on one store. After kill -9 of the first, a master starts on
that database at once: no stale lock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync._util.ports import stable_free_port
from relaysync.master.db_lock import MASTER_LOCK_KEY, describe_holder
from relaysync.testing.cluster import Cluster
from tests.conftest import _create_database, _drop_database

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 60.0  # the refused process exits in about a second (its imports)
REFUSED_EXIT = 21  # DatabaseInUse.exit_code


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database outside every data directory of the test."""
    if request.param == "sqlite":
        (tmp_path / "shared").mkdir()
        yield f"sqlite:///{tmp_path / 'shared' / 'fleet.db'}"
        return
    server: str = request.getfixturevalue("postgres_url")
    name = f"dblock_it_{os.getpid()}"
    yield _create_database(server, name)
    _drop_database(server, name)


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[Cluster]:
    """A master on `database_url` and one agent, a1."""
    c = Cluster(tmp_path / "fleet")
    try:
        c.start_master(database_url=database_url)
        c.start_agent("a1")
        yield c
    finally:
        c.stop()


def _second_master(data: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
    args = ["--data", str(data), "--database-url", database_url]
    args += ["--listen", f"127.0.0.1:{stable_free_port()}"]
    args += ["--control-listen", f"127.0.0.1:{stable_free_port()}"]
    return subprocess.run(
        [sys.executable, "-m", "relaysync", "master", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
    )


def _holder(cluster: Cluster, database_url: str) -> str:
    assert cluster.master is not None
    record = f"relaysync master {socket.gethostname()} pid {cluster.master.pid} "
    record += f"data {cluster.master_dir.resolve()}"
    if database_url.startswith("sqlite"):
        return describe_holder(record)
    # PostgreSQL keeps 63 bytes of an application_name; the master connects from loopback
    return describe_holder(record[:63], "127.0.0.1", application_name=True)


def test_a_second_master_on_the_same_database_is_refused(
    cluster: Cluster, database_url: str, tmp_path: Path
) -> None:
    assert cluster.master is not None
    data = tmp_path / "second"
    second = _second_master(data, database_url)
    assert second.returncode == REFUSED_EXIT, second.stderr
    assert second.stderr.splitlines()[-1] == (  # one line, whatever the terminal's width
        f"error: another {_holder(cluster, database_url)} is using database {database_url}; "
        "run one master per database: stop it first, or give this master its own database_url"
    )
    assert sorted(p.name for p in data.iterdir()) == ["lock"]  # no CA, no tokens: refused first
    assert cluster.master.alive()
    assert cluster.api.get("/api/servers/a1").json()["state"] == "up"


def test_a_master_starts_on_the_database_of_a_killed_one(
    cluster: Cluster, database_url: str, tmp_path: Path
) -> None:
    """kill -9 runs no cleanup: PostgreSQL ends the session (its lock goes with it), the kernel
    drops the flock; another master, with its own data directory, starts there at once."""
    assert cluster.master is not None
    cluster.master.kill()
    other = Cluster(tmp_path / "other")
    try:
        other.start_master(database_url=database_url)  # polls until it is ready, or fails
        assert other.api.get("/api/servers").status_code == 200
    finally:
        other.stop()


@pytest.mark.postgres
def test_a_master_whose_database_was_taken_meanwhile_stops(
    postgres_url: str, tmp_path: Path
) -> None:
    """Its lock session ended (a PostgreSQL restart, a network failure) and another master took
    the lock before it could take it again: it stops, saying who has the database."""
    import psycopg

    url = _create_database(postgres_url, f"dblock_over_{os.getpid()}")
    cluster = Cluster(tmp_path / "fleet")
    try:
        cluster.start_master(database_url=url)
        assert cluster.master is not None and cluster.master.popen is not None
        other = "relaysync master otherhost pid 4242 data /srv/other"
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True, application_name=other) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s",
                (f"relaysync master % pid {cluster.master.pid} %",),
            )
            # granted once the killed session let go: before the master's next check sees it
            conn.execute("SELECT pg_advisory_lock(%s)", (MASTER_LOCK_KEY,))
            code = cluster.master.popen.wait(RUN_TIMEOUT_S)
        assert code == REFUSED_EXIT, cluster.master.log_tail()
        assert cluster.master.log_tail().splitlines()[-1] == (
            "error: another relaysync master (host otherhost, pid 4242, data /srv/other, from "
            f"127.0.0.1) took database {url} while this master's lock connection was down; "
            "this master stops: run one master per database"
        )
    finally:
        cluster.stop()
        _drop_database(postgres_url, f"dblock_over_{os.getpid()}")
