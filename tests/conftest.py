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

pytest_plugins = ["tests._thread_leaks", "tests._worker_exit"]

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


def _create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    import psycopg

    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    copy_of = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy_of}')
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


def _migrated(url: str) -> None:
    store = Store(url)
    try:
        store.migrate()
    finally:
        store.close()  # the last connection goes: SQLite folds its WAL into the file


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session: each test gets a copy (migrating costs ~0.15 s)."""
    path = tmp_path_factory.mktemp("schema") / "template.db"
    _migrated(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_template(postgres_url: str) -> Iterator[str]:
    """A database migrated once per session, the TEMPLATE of each test's (migrating costs ~0.4 s)."""
    name = f"template_{os.getpid()}"
    _migrated(_create_database(postgres_url, name))
    try:
        yield name
    finally:
        _drop_database(postgres_url, name)


def _fresh_database(request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool) -> str:
    """The URL of a new database on `request.param`'s engine, empty or with the current schema."""
    if request.param == "sqlite":
        path = tmp_path / "master.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    template = request.getfixturevalue("_postgres_template") if migrated else None
    server_url = request.getfixturevalue("postgres_url")
    name = f"test_{os.getpid()}_{next(_db_numbers)}"
    url = _create_database(server_url, name, template=template)
    request.addfinalizer(lambda: _drop_database(server_url, name))
    return url


_ENGINES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=_ENGINES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new database holding the current schema and no rows: SQLite or PostgreSQL."""
    return _fresh_database(request, tmp_path, migrated=True)


@pytest.fixture(params=_ENGINES)
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty database (no schema), for the tests of the migrations themselves."""
    return _fresh_database(request, tmp_path, migrated=False)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A Store on a fresh database with the current schema, closed afterwards."""
    s = Store(store_url)
    try:
        yield s
    finally:
        s.close()
