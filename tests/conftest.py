"""Shared fixtures: a throwaway PostgreSQL server, and a fresh Store on SQLite and on PostgreSQL."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.master.store import Store
from relaysync.testing.caches import CacheFarm, start_cache_farm

PG_START_TIMEOUT_S = 60  # initdb takes ~0.7 s and start ~0.1 s here; slow CI boxes get headroom
_db_numbers = itertools.count(1)


def _pg_bin_dir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail(
        "PostgreSQL binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
        "install them with `apt-get install -y postgresql`; the store tests must run on PostgreSQL too",
        pytrace=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    # initdb refuses to run as root: run the server as the package's postgres user.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _pg_run(args: list[str]) -> None:
    result = subprocess.run(
        _as_postgres(args), capture_output=True, text=True, timeout=PG_START_TIMEOUT_S
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on a loopback port, for the whole session."""
    bin_dir = _pg_bin_dir()
    # Not under pytest's tmp dirs: those are 0700 root-owned and the postgres user must traverse.
    base = Path(tempfile.mkdtemp(prefix="relaysync-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    base.chmod(0o700)
    data, port = base / "data", _free_port()
    _pg_run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"])
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    _pg_run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(base / "log"),
            "-w",
            "start",
        ]
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
            timeout=PG_START_TIMEOUT_S,
        )
        shutil.rmtree(base, ignore_errors=True)


def _create_database(server_url: str, name: str) -> str:
    import psycopg

    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def _drop_database(server_url: str, name: str) -> None:
    import psycopg

    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def cache_farm() -> Iterator[CacheFarm]:
    """Varnish, nginx (cache-purge) and Squid on loopback ports, once per session, in front of
    one origin web server that serves `cache_farm.docroot`."""
    farm = start_cache_farm()
    try:
        yield farm
    finally:
        farm.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database: a new SQLite file, or a new database on the session server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'master.db'}"
        return
    server_url = request.getfixturevalue("postgres_url")
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    url = _create_database(server_url, name)
    try:
        yield url
    finally:
        _drop_database(server_url, name)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated Store on a fresh database, closed afterwards."""
    s = Store(store_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()
