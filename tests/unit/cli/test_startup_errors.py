"""`relaysync master|agent` and the operator commands stop on a bad start-up with one line on
stderr and the error's exit code: a bad --config, a missing --master, a --data that is a file, a
--master that is not a URL, a port another process holds. No traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.cli._run import check_data_dir
from relaysync.errors import ConfigError

CLI_TIMEOUT_S = 60.0  # a master that starts until its API bind fails takes ~2 s


def cli(
    *args: str, cwd: Path, timeout_s: float = CLI_TIMEOUT_S, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m relaysync ARGS` (bounded) with no RELAYSYNC_* settings of the caller's,
    only those of `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
    env = base | {"COLUMNS": "80"} | (env or {})  # narrow: the message must not wrap anyway
    return subprocess.run(
        [sys.executable, "-m", "relaysync", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout_s,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of stderr, after asserting that there is no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.rstrip().endswith(lines[0]), result.stderr  # its last line, whole
    return lines[0]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 this test listens on, for the commands under test to find in use."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (None, "missing.toml: No such file or directory"),
        ('listen = "127.0.0.1:18470\n', "bad.toml: Illegal character"),
        ("listen = 18470\n", "listen: Expected `str`, got `int`"),
        ('api_tls = "https"\n', "api_tls: Invalid enum value 'https'"),
        ("heartbeat_grace_s = -1\n", "heartbeat_grace_s: Expected `float` >= 0.0"),
        (
            'listn = "127.0.0.1:18470"\n',
            "bad.toml: unknown setting 'listn' (did you mean 'listen'?)",
        ),
    ],
)
def test_a_bad_master_config_is_one_line(tmp_path: Path, toml: str | None, expected: str) -> None:
    name = "missing.toml"
    if toml is not None:
        name = "bad.toml"
        (tmp_path / name).write_text(toml)
    result = cli("master", "--data", "m", "--config", name, cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code, result.stderr
    assert error_line(result).startswith(f"error: Configuration error: {expected}")
    assert not (tmp_path / "m").exists()  # stopped before anything was made


def test_an_unknown_agent_setting_names_the_nearest(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('master_url = "http://127.0.0.1:8470"\nrescan_interval = 5\n')
    result = cli("agent", "--name", "b1", "--data", "a", "--config", "a.toml", cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code, result.stderr
    assert error_line(result) == (
        "error: Configuration error: a.toml: unknown setting 'rescan_interval' "
        "(did you mean 'rescan_interval_s'?)"
    )


def test_an_agent_without_master_names_the_option(tmp_path: Path) -> None:
    result = cli("agent", "--name", "b1", "--data", "a", cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code, result.stderr
    assert error_line(result) == (
        "error: Configuration error: no master_url given: set it with --master, master_url "
        "in the --config file or RELAYSYNC_MASTER_URL"
    )


@pytest.mark.parametrize("command", ["master", "agent"])
@pytest.mark.parametrize("below", [False, True])
def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path, command: str, below: bool) -> None:
    (tmp_path / "afile").write_text("x")
    data = "afile/sub" if below else "afile"
    args = ["--master", "http://127.0.0.1:8470", "--name", "b1"] if command == "agent" else []
    result = cli(command, "--data", data, *args, cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code, result.stderr
    why = "is below afile, which is" if below else "is"
    assert error_line(result) == f"error: Configuration error: --data {data} {why} not a directory"


BAD_URLS = [
    ("http://256.1.1.1:8470", "'256.1.1.1' is not an IP address"),
    ("http://127.0.0.1:84x0", "port could not be cast to integer value as '84x0'"),
    ("http://[::1", "invalid IPv6 URL"),
    ("127.0.0.1:8470", "no http:// or https:// in front"),
    ("http://127.0.0.1:8470/api", "no path: the master's API paths are added to host:port"),
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
@pytest.mark.parametrize("argv", [["status"], ["agent", "--name", "b1", "--data", "a"]])
def test_a_master_url_that_is_not_one_is_one_line(
    tmp_path: Path, url: str, why: str, argv: list[str]
) -> None:
    result = cli(*argv, "--master", url, cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code, result.stderr
    assert error_line(result) == (
        f"error: Configuration error: --master must be http(s)://host:port, got '{url}' ({why})"
    )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("option", ["--listen", "--control-listen", "--purge-listen"])
def test_a_master_port_in_use_is_one_line(tmp_path: Path, held_port: int, option: str) -> None:
    args = {"--listen": "127.0.0.1:0"} | {option: f"127.0.0.1:{held_port}"}
    result = cli("master", "--data", "m", *(x for kv in args.items() for x in kv), cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code  # CannotListen is one, result.stderr
    assert error_line(result) == (
        f"error: Cannot listen on 127.0.0.1:{held_port}: address already in use (another "
        f"relaysync, or another program? see ss -ltnp); choose another with {option}."
    )


def test_an_agents_bad_master_url_is_named_where_it_was_given(tmp_path: Path) -> None:
    """A bad master_url from the file or RELAYSYNC_MASTER_URL was reported as "--master must
    be ...": the operator looked for an option nobody gave."""
    (tmp_path / "agent.toml").write_text('master_url = "127.0.0.1:8470"\n')
    from_file = cli("agent", "--name", "b1", "--config", "agent.toml", "--data", "a", cwd=tmp_path)
    assert error_line(from_file).startswith(
        "error: Configuration error: master_url in agent.toml must be http(s)://host:port"
    )
    from_env = cli(
        "agent", "--name", "b1", "--data", "a", cwd=tmp_path, env={"RELAYSYNC_MASTER_URL": "h:1"}
    )
    assert error_line(from_env).startswith(
        "error: Configuration error: RELAYSYNC_MASTER_URL must be http(s)://host:port"
    )


def test_a_data_dir_that_cannot_be_searched_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--data /root/x` as another user: Path.exists raises PermissionError (Python 3.11),
    which went out as a traceback (this suite runs as root: the error is made here)."""

    def refused(self: Path, **_: object) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", refused)
    with pytest.raises(ConfigError, match=r"--data .*x cannot be used: Permission denied"):
        check_data_dir(tmp_path / "x")


def test_a_misspelt_variable_is_a_warning_once_on_stderr(tmp_path: Path) -> None:
    """RELAYSYNC_MASTER_ULR was ignored in silence: the agent said only that no master_url was
    given. The warning comes once, on stderr, before the error; known variables are not named."""
    env = {"RELAYSYNC_MASTER_ULR": "http://127.0.0.1:8470", "RELAYSYNC_TEST_WORKERS": "1"}
    result = cli("agent", "--name", "b1", "--data", "a", cwd=tmp_path, env=env)
    assert result.returncode == ConfigError.exit_code, result.stderr
    assert result.stdout == ""
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: RELAYSYNC_MASTER_ULR is not a relaysync setting (did you mean "
        "RELAYSYNC_MASTER_URL?); ignored"
    ], result.stderr
    assert error_line(result).startswith("error: Configuration error: no master_url given")


def test_a_remembered_control_port_in_use_names_its_file(tmp_path: Path, held_port: int) -> None:
    """The control port read back from data_dir/control-port, held by another program: the
    error said "choose another with --control-listen", an option the operator never gave, and
    which would leave the joined agents knocking at the old port."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "control-port").write_text(f"{held_port}\n")
    result = cli("master", "--data", "m", "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code, result.stderr
    assert error_line(result) == (
        f"error: Cannot listen on 127.0.0.1:{held_port}: address already in use (another "
        "relaysync, or another program? see ss -ltnp); this control port was remembered in "
        "m/control-port from the last run, because every joined agent saved it at its join and "
        "connects there: free it and start the master again (--control-listen HOST:PORT takes "
        "another, but then each joined agent's DATA/identity/master.json must get it as its "
        "control_address)."
    )


@pytest.mark.parametrize(
    "url",
    [
        "sqlite//m.db",
        "postgresql+psycopg://u:s3cret@127.0.0.1:notaport/db",
        "mysql://u:s3cret@h/db",
    ],
)
def test_a_bad_database_url_is_one_line_without_its_password(tmp_path: Path, url: str) -> None:
    """The database lock parses the URL before the store does: a bad one was a traceback."""
    result = cli("master", "--data", "m", "--database-url", url, cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code, result.stderr
    line = error_line(result)
    assert "database_url" in line and "s3cret" not in result.stderr, result.stderr
