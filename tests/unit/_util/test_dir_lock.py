"""A data directory is locked by one process at a time; the kernel frees the lock of a dead one."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync._util import dir_lock
from relaysync._util.dir_lock import LOCK_FILE, lock_data_dir
from relaysync.errors import ConfigError, DataDirInUse
from relaysync.testing.cluster import wait_until

HOLDER_TIMEOUT_S = 30.0
# Holds the lock of argv[1] as a master, then sleeps (bounded) until the test kills it.
HOLDER = (
    "import sys, time; from pathlib import Path; "
    "from relaysync._util.dir_lock import lock_data_dir; "
    "lock = lock_data_dir(Path(sys.argv[1]), 'master'); time.sleep(120)"
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the lock of tmp_path/data (its pid is in the lock file)."""
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)])
    try:
        wait_until(
            lambda: _content(data / LOCK_FILE) == f"{proc.pid} master\n",
            timeout_s=HOLDER_TIMEOUT_S,
            what="the holder's lock",
        )
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(HOLDER_TIMEOUT_S)


def _content(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_second_process_is_refused_with_the_holders_pid(
    tmp_path: Path, holder: subprocess.Popen[bytes]
) -> None:
    data = tmp_path / "data"
    with pytest.raises(DataDirInUse) as caught:
        lock_data_dir(data, "agent")
    assert str(caught.value) == (
        f"another relaysync master (pid {holder.pid}) is using {data.resolve()}; "
        "stop it first, or give this agent its own --data"
    )
    assert isinstance(caught.value, ConfigError) and caught.value.exit_code == 21
    assert _content(data / LOCK_FILE) == f"{holder.pid} master\n"  # the refused one wrote nothing


def test_the_lock_of_a_killed_holder_is_free_at_once(
    tmp_path: Path, holder: subprocess.Popen[bytes]
) -> None:
    """kill -9 runs no cleanup: the kernel drops the lock; the file stays, and is taken over."""
    data = tmp_path / "data"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(HOLDER_TIMEOUT_S)
    with lock_data_dir(data, "master") as lock:
        assert lock.held
        assert _content(data / LOCK_FILE) == f"{os.getpid()} master\n"
    assert (data / LOCK_FILE).exists()  # never removed: a new file would make a second lock


def test_two_locks_in_one_process_conflict_until_released(tmp_path: Path) -> None:
    """flock is per open file: a service run twice in one process (tests) is refused too, and a
    released lock (the service ended) can be taken again at once."""
    data = tmp_path / "new" / "data"
    first = lock_data_dir(data, "agent")
    assert data.stat().st_mode & 0o777 == 0o700  # made for it
    with pytest.raises(DataDirInUse, match=rf"relaysync agent \(pid {os.getpid()}\)"):
        lock_data_dir(data, "agent")
    first.release()
    first.release()  # idempotent
    lock_data_dir(data, "agent").release()


def test_a_file_without_a_pid_names_no_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lock_data_dir(data, "master"):
        (data / LOCK_FILE).write_text("")  # as if the holder had not written it yet
        with pytest.raises(DataDirInUse, match=r"^another relaysync process is using "):
            lock_data_dir(data, "master")


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_flock_warns_and_runs_unprotected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    def no_flock(fd: int, op: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(dir_lock.fcntl, "flock", no_flock)
    with caplog.at_level(logging.WARNING, logger=dir_lock.__name__):
        lock = lock_data_dir(tmp_path / "data", "master")
    assert not lock.held
    assert "cannot lock" in caplog.text
    lock.release()


def test_another_flock_error_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line naming the lock file, not a traceback."""

    def bad_fd(fd: int, op: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(dir_lock.fcntl, "flock", bad_fd)
    with pytest.raises(ConfigError, match=r"cannot lock .*lock: .*Input/output error"):
        lock_data_dir(tmp_path / "data", "master")


def test_a_file_in_place_of_the_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    for data in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(ConfigError, match=r"data directory .*afile.* cannot be used"):
            lock_data_dir(data, "agent")
