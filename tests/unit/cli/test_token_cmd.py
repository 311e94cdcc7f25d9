"""`relaysync token`: the table of join and API tokens, and revoke's request path."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from relaysync.cli.app import app
from relaysync.cli.token_cmd import tokens_table
from tests.unit.cli.test_client import a_server


def render(*tables: object) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    for table in tables:
        console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_table_shows_both_kinds_expiry_and_the_admin_note() -> None:
    join = [
        {"id": "0123456789ab", "created_at": 1000.0, "expires_at": None, "expired": False},
        {
            "id": "ba9876543210",
            "created_at": 1000.0,
            "expires_at": 2000.0,
            "expired": True,
            "created_by": "api:7",
        },
    ]
    api = [
        {"id": 7, "name": "[bot] ci", "created_at": 1000.0, "scope": "admin"},
        {"id": 8, "name": "grafana", "created_at": 1000.0, "scope": "read", "created_by": "admin"},
    ]
    text = render(tokens_table(join, api))
    rows = {line.split("│")[2].strip(): line for line in text.splitlines() if "│" in line}
    assert "never" in rows["0123456789ab"] and "valid" in rows["0123456789ab"]
    assert "expired" in rows["ba9876543210"]
    assert "[bot] ci" in rows["7"] and "api" in rows["7"]  # brackets are not a style tag
    assert "admin-token" in text
    assert "?" in rows["7"] and "?" in rows["0123456789ab"]  # created before creators were kept
    assert "read" in rows["8"] and "admin" in rows["8"] and "api:7" in rows["ba9876543210"]


@pytest.mark.parametrize("token_id", ["1/../../servers/x", "a?b"])
def test_revoke_sends_the_id_as_one_path_segment(token_id: str) -> None:
    """An id with / or ? is quoted into one path segment, so it cannot name another route."""
    with a_server(404, b'{"detail": "API token not found."}', "application/json") as url:
        result = CliRunner().invoke(
            app, ["token", "revoke", "api", token_id, "--master", url, "--token", "t"]
        )
    assert result.exit_code == 15, result.output
    path = token_id.replace("/", "%2F").replace("?", "%3F")
    assert f"DELETE /api/tokens/api/{path}" in result.output.replace("\n", "")


def test_revoke_refuses_an_unknown_kind_before_asking_the_master() -> None:
    result = CliRunner().invoke(app, ["token", "revoke", "admin", "x", "--master", "http://h:1"])
    assert result.exit_code == 2  # a usage error, not MasterUnreachable: nothing was sent
    assert "join" in result.output and "api" in result.output
