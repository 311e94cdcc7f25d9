"""`relaysync server set|remove|revoke NAME` refuse a NAME with "/" at once: no server can have
one (names are checked at join: 1-63 of A-Z a-z 0-9 . _ -; node ids are hex), and the master's
router decodes %2F before routing, so such a NAME was not one path segment."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaysync.errors import ConfigError
from tests.unit.cli.test_startup_errors import cli, error_line

NO_MASTER = "http://127.0.0.1:1"  # nothing listens: a command that got this far fails otherwise


@pytest.mark.parametrize(
    "command", [["remove"], ["revoke"], ["set", "--region", "eu"]], ids=lambda c: c[0]
)
def test_a_name_with_a_slash_is_refused_before_the_master_is_asked(
    tmp_path: Path, command: list[str]
) -> None:
    args = ["server", command[0], "web/1", *command[1:], "--master", NO_MASTER, "--token", "t"]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code, result.stderr
    assert error_line(result) == (
        "error: Configuration error: no server is named 'web/1': server names are 1-63 of "
        "A-Z a-z 0-9 . _ - (no '/'), node ids are hex; `relaysync status` lists them"
    )
