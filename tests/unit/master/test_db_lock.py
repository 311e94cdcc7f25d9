"""One master per SQLite database: a lock file beside it; and what a refused master is told."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from relaysync.errors import ConfigError, DatabaseInUse, DatabaseTakenOver
from relaysync.master.db_lock import describe_holder, holder_record, lock_database, shown_url


def test_the_url_shown_has_no_password_nor_query() -> None:
    url = "postgresql+psycopg://relay:s3cret@db.example:5433/fleet?password=qpw9z&sslmode=require"
    shown = shown_url(url)
    assert shown == "postgresql+psycopg://relay@db.example:5433/fleet"
    error = DatabaseInUse(describe_holder("relaysync master h1 pid 7 data /srv/rs"), shown)
    assert str(error) == (
        "another relaysync master (host h1, pid 7, data /srv/rs) is using database "
        "postgresql+psycopg://relay@db.example:5433/fleet; run one master per database: stop it "
        "first, or give this master its own database_url"
    )
    assert "s3cret" not in str(error) and "qpw9z" not in str(error)
    assert "\n" not in str(error)
    assert isinstance(error, ConfigError) and error.exit_code == 21


def test_a_taken_over_database_says_this_master_stops() -> None:
    error = DatabaseTakenOver("relaysync master (host h2, pid 9)", "sqlite:////x.db")
    assert str(error) == (
        "another relaysync master (host h2, pid 9) took database sqlite:////x.db while this "
        "master's lock connection was down; this master stops: run one master per database"
    )
    assert error.exit_code == 21


@pytest.mark.parametrize(
    ("record", "address", "described"),
    [
        ("relaysync master h pid 12 data /d", "10.0.0.5", "relaysync master (host h, pid 12, data /d, from 10.0.0.5)"),
        ("", None, "relaysync master"),
        ("", "10.0.0.5", "relaysync master (from 10.0.0.5)"),
        ("psql", None, "relaysync master (application_name 'psql')"),
        # PostgreSQL cut a long name at 63 bytes: the data directory is marked as cut
        ("relaysync master h pid 12 data /a/very/long/path/that/postgres/", None, "relaysync master (host h, pid 12, data /a/very/long/path/that/postgres/...)"),
    ],
)  # fmt: skip
def test_the_holder_is_described_from_what_it_wrote(
    record: str, address: str | None, described: str
) -> None:
    assert describe_holder(record, address, application_name=True) == described


def test_a_long_record_from_a_lock_file_is_whole() -> None:
    record = "relaysync master h pid 12 data /a/very/long/path/that/postgres/would/cut"
    assert describe_holder(record).endswith("/would/cut)")


def test_a_second_master_on_a_shared_sqlite_file_is_refused(tmp_path: Path) -> None:
    """Two data directories, one database outside both: the second is refused, naming the first;
    released (a clean stop), the lock is free again at once."""
    url = f"sqlite:///{tmp_path / 'shared' / 'fleet.db'}"
    (tmp_path / "shared").mkdir()
    first = lock_database(url, tmp_path / "d1")
    with pytest.raises(DatabaseInUse) as caught:
        lock_database(url, tmp_path / "d2")
    assert str(caught.value) == (
        f"another relaysync master (host {socket.gethostname()}, pid {os.getpid()}, data "
        f"{(tmp_path / 'd1').resolve()}) is using database {url}; run one master per database: "
        "stop it first, or give this master its own database_url"
    )
    lock_file = tmp_path / "shared" / "fleet.db.master-lock"
    assert lock_file.read_text() == holder_record(tmp_path / "d1") + "\n"
    first.release()
    first.release()  # idempotent
    lock_database(url, tmp_path / "d2").release()
    assert lock_file.exists()  # kept: a new file would make a second lock


def test_the_default_database_in_a_data_dir_is_locked_too(tmp_path: Path) -> None:
    """Another master may be given data_dir/master.db by URL, with a data directory of its own."""
    url = f"sqlite:///{tmp_path / 'd1' / 'master.db'}"
    (tmp_path / "d1").mkdir()
    with lock_database(url, tmp_path / "d1")._file or pytest.fail("no lock file"):
        with pytest.raises(DatabaseInUse, match=r"data .*d1\) is using database sqlite:"):
            lock_database(f"sqlite:///{tmp_path / 'd2' / '..' / 'd1' / 'master.db'}", tmp_path)


def test_a_database_in_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^Configuration error: database .*nowhere.* cannot be used"
    ):
        lock_database(f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}", tmp_path)
