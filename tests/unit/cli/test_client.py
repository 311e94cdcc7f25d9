"""The operator commands' client: where the master is, which token, and errors as exit codes."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from relaysync.cli._client import MasterClient, Target, error_for, resolve_target
from relaysync.cli.app import app
from relaysync.errors import (
    AuthError,
    ConfigError,
    MasterUnreachable,
    NotFound,
    RelaySyncError,
    StoreError,
)


def master_dir(base: Path, url: str = "http://127.0.0.1:8470", token: str = "admin-secret") -> Path:
    base.mkdir(parents=True, exist_ok=True)
    (base / "master.json").write_text(json.dumps({"api_url": url, "control_address": "x:1"}))
    (base / "admin-token").write_text(token + "\n")
    return base


def test_option_wins_over_environment_and_data(tmp_path: Path) -> None:
    data = master_dir(tmp_path / "m")
    env = {"RELAYSYNC_MASTER": "http://env:1", "RELAYSYNC_TOKEN": "env-token"}
    got = resolve_target(master="http://opt:2/", token="opt-token", data=data, environ=env)
    assert got == Target(url="http://opt:2", token="opt-token")


def test_environment_then_local_data_dir(tmp_path: Path) -> None:
    data = master_dir(tmp_path / "m", url="http://local:3")
    env = {"RELAYSYNC_MASTER": "http://env:1", "RELAYSYNC_MASTER_DATA": str(data)}
    assert resolve_target(environ=env) == Target(url="http://env:1", token="admin-secret")
    env = {"RELAYSYNC_MASTER_DATA": str(data), "RELAYSYNC_TOKEN": "env-token"}
    assert resolve_target(environ=env) == Target(url="http://local:3", token="env-token")


def test_explicit_data_dir_wins_over_environment_master(tmp_path: Path) -> None:
    data = master_dir(tmp_path / "m", url="http://local:3")
    got = resolve_target(data=data, environ={"RELAYSYNC_MASTER": "http://env:1"})
    assert got == Target(url="http://local:3", token="admin-secret")


def test_no_master_anywhere_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--master URL"):
        resolve_target(environ={})
    with pytest.raises(ConfigError, match=r"not a running master's data directory \(no such"):
        resolve_target(data=tmp_path / "missing", environ={})
    (tmp_path / "empty").mkdir()  # said "master.json: No such file or directory", no more
    with pytest.raises(ConfigError, match=r"\(no master.json in it\): give the --data of"):
        resolve_target(data=tmp_path / "empty", environ={})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "master.json").write_text("{}")
    with pytest.raises(ConfigError, match="api_url"):
        resolve_target(data=tmp_path / "bad", environ={})


def test_token_may_be_absent_with_an_explicit_url() -> None:
    assert resolve_target(master="http://h:1", environ={}).token == ""


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFound),
        (422, ConfigError),
        (503, StoreError),
        (500, RelaySyncError),
    ],
)
def test_http_status_maps_to_error(status: int, error: type[RelaySyncError]) -> None:
    response = httpx.Response(status, json={"detail": "Mapping 'x' not found."})
    found = error_for(response, "GET /api/mappings/x")
    assert type(found) is error or isinstance(found, error)
    assert "Mapping 'x' not found." in str(found) and "GET /api/mappings/x" in str(found)


def test_validation_details_are_readable() -> None:
    body = {"detail": [{"loc": ["query", "by"], "msg": "Input should be 'server'"}]}
    found = error_for(httpx.Response(422, json=body), "GET /api/stats")
    assert str(found) == "Configuration error: GET /api/stats: query.by: Input should be 'server'"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def test_a_master_that_does_not_answer_is_unreachable() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with (
        MasterClient(Target(url=url, token="t")) as client,
        pytest.raises(MasterUnreachable) as info,
    ):
        client.get("/api/servers")
    assert url in str(info.value)
    assert info.value.exit_code == 16


@pytest.mark.parametrize("argv", [["status"], ["log"], ["stats"], ["mapping", "list"]])
def test_commands_exit_with_the_error_code(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RELAYSYNC_MASTER", "RELAYSYNC_TOKEN", "RELAYSYNC_MASTER_DATA"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    result = runner.invoke(app, [*argv, "--master", f"http://127.0.0.1:{closed_port()}"])
    assert result.exit_code == MasterUnreachable.exit_code, result.output
    assert "does not answer" in result.output
    result = runner.invoke(app, argv)
    assert result.exit_code == ConfigError.exit_code
    assert "no master" in result.output


@contextmanager
def a_server(status: int, body: bytes, content_type: str) -> Iterator[str]:
    """A real web server on 127.0.0.1 that answers every request with `status` and `body`;
    yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("argv", [["status"], ["log"], ["stats"], ["mapping", "list"]])
def test_a_server_that_is_not_the_master_is_a_clear_error(argv: list[str]) -> None:
    """200 with an HTML page: an error naming the URL and an exit code, not a JSON traceback."""
    page = b"<!DOCTYPE html><html><body>It works!</body></html>"  # --master at the wrong port
    with a_server(200, page, "text/html") as url:
        result = CliRunner().invoke(app, [*argv, "--master", url, "--token", "t"])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == MasterUnreachable.exit_code, result.output
    assert url in result.output and "not JSON" in result.output


def test_an_error_naming_a_bracketed_path_is_printed_as_it_is() -> None:
    """The master's 404 detail names what the operator asked for, brackets and all."""
    detail = "Mapping 'www[/old]' not found."
    with a_server(404, json.dumps({"detail": detail}).encode(), "application/json") as url:
        result = CliRunner().invoke(app, ["mapping", "remove", "www[/old]", "--master", url])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == NotFound.exit_code
    assert detail in result.output.replace("\n", " ")


def test_a_token_with_characters_no_token_has_is_a_clear_error() -> None:
    """A token pasted with a typographic character or a line break cannot be an HTTP header."""
    url = f"http://127.0.0.1:{closed_port()}"
    for token in ("admin-sécret", "admin\nsecret"):
        result = CliRunner().invoke(app, ["status", "--master", url, "--token", token])
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == ConfigError.exit_code and "token" in result.output


@pytest.mark.parametrize(
    ("status", "detail", "expected"),
    [
        (
            422,
            "Configuration error: source path 'a/../b' must not contain '..'",
            "error: Configuration error: POST /api/mappings: source path 'a/../b' must not "
            "contain '..'",
        ),
        (403, "Authentication error: read-only token", "error: Authentication error: "),
        (503, "Store error: database is locked", "error: Store error: "),
    ],
)
def test_the_masters_error_prefix_is_not_printed_twice(
    status: int, detail: str, expected: str
) -> None:
    """The master's detail says "Configuration error: ..." already; the client's error too."""
    body = json.dumps({"detail": detail}).encode()
    argv = ["mapping", "add", "m", "--source", "a:/x", "--target", "b:/y"]
    with a_server(status, body, "application/json") as url:
        result = CliRunner().invoke(app, [*argv, "--master", url, "--token", "t"])
    assert isinstance(result.exception, SystemExit), result.exception
    line = result.output.strip()
    assert "\n" not in line and line.startswith(expected), line
    assert line.count("error:") == 2, line  # "error: X error: POST ...: <detail without X error:>"


@pytest.mark.parametrize("url", ["http://h:8470\r", " http://h:8470", "http://h:84\t70"])
def test_a_master_url_with_a_space_or_control_character_is_refused(url: str) -> None:
    """urlsplit drops some of them silently, and httpx then refused the URL with a traceback
    (an env file with CRLF line ends gives `http://h:8470\\r`)."""
    with pytest.raises(ConfigError, match="space or control character"):
        resolve_target(master=url, environ={})


@pytest.mark.parametrize(
    "url", ["https://bücher.example:8470", "http://127.1:8470", "http://[::1]:8470", "https://h"]
)
def test_master_urls_the_resolver_and_httpx_take_are_taken(url: str) -> None:
    """The first check refused an internationalised host name and the short IPv4 forms."""
    assert resolve_target(master=url, environ={}).url == url
