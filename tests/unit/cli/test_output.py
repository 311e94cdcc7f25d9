"""Operator command output: CSV, JSON, sizes and times, and the rich tables' content."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from relaysync.cli._client import format_bytes, format_duration, format_time, print_json, to_csv
from relaysync.cli.app import app
from relaysync.cli.log_cmd import (
    CHANGE_COLUMNS,
    EXCEPTION_COLUMNS,
    changes_table,
    exceptions_table,
    label,
)
from relaysync.cli.mapping_cmd import mapping_body, mappings_table, parse_mode_mask, split_location
from relaysync.cli.send_cmd import SendNotTaken, _follow_release
from relaysync.cli.stats_cmd import stats_table
from relaysync.cli.status_cmd import fetch_status, servers_table
from relaysync.cli.status_cmd import mappings_table as status_mappings_table
from relaysync.errors import ConfigError
from relaysync.master.api.stats import StatOut, parse_time, stats_csv
from tests.unit.cli.test_client import a_server


def render(table: Table) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_csv_has_a_header_and_empty_cells_for_none() -> None:
    text = to_csv([{"a": 1, "b": None, "c": "x,y"}, {"a": 2}], ["a", "b", "c"])
    assert list(csv.reader(io.StringIO(text))) == [["a", "b", "c"], ["1", "", "x,y"], ["2", "", ""]]


def test_print_json_is_one_plain_document(capsys: pytest.CaptureFixture[str]) -> None:
    print_json({"b": [1, 2], "a": None})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [1, 2]}


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB"), (None, "")],
)
def test_format_bytes(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


def test_format_time_and_duration() -> None:
    assert format_time(None) == "never"
    assert format_time(1000.0, now_s=1042.0).endswith("(42 s ago)")
    assert format_duration(7200) == "2 h" and format_duration(90) == "2 min"


def test_status_tables_show_state_lag_and_exceptions() -> None:
    servers = [
        {
            "name": "web1",
            "region": "eu",
            "group": "g",
            "state": "down",
            "health": "unhealthy",
            "last_seen": None,
        },
        {
            "name": "web2",
            "region": "eu",
            "group": "g",
            "state": "up",
            "health": "ok",
            "last_seen": None,
            "cert_expires_in_s": 10 * 86400,
        },
        {
            "name": "web3",
            "region": "eu",
            "group": "g",
            "state": "up",
            "health": "ok",
            "last_seen": None,
            "cert_expires_in_s": -2 * 86400,
        },
    ]
    out = render(servers_table(servers))
    assert "web1" in out and "down" in out and "unhealthy" in out and "never" in out
    assert "unknown" in out and "10 d left" in out and "expired 2 d ago" in out
    mappings = [
        {
            "name": "www",
            "source": "origin",
            "source_path": "/srv",
            "enabled": False,
            "targets": [
                {
                    "target_name": "web1",
                    "path": "/var/www",
                    "watermark": 7,
                    "lag": 3,
                    "open_exceptions": 2,
                    "updated_at": None,
                }
            ],
        }
    ]
    out = render(status_mappings_table(mappings))
    assert "origin:/srv (disabled)" in out and "web1:/var/www" in out
    assert " 7 " in out and " 3 " in out and " 2 " in out


class _Master:
    """The API answers `relaysync status` reads: one manual mapping with changes held back."""

    def get(self, path: str) -> Any:
        target = {"target_name": "web1", "path": "/var/www", "watermark": 10, "lag": 4}
        target |= {"pending": 6, "open_exceptions": 0, "updated_at": None}
        mapping = {"id": 1, "name": "www", "source_name": "origin", "source_path": "/srv"}
        return {
            "/api/servers": [],
            "/api/mappings": [{**mapping, "enabled": True}],
            "/api/mappings/1/status": {"targets": [target]},
        }[path]


def test_status_keeps_held_back_changes_apart_from_the_lag() -> None:
    """A manual or reserved mapping's changes not yet released are `pending` (by choice), summed
    and shown on their own, uncoloured: not lag."""
    document = fetch_status(_Master())  # type: ignore[arg-type]
    assert document["summary"]["lag"] == 4 and document["summary"]["pending"] == 6
    assert document["mappings"][0]["pending"] == 6
    table = status_mappings_table(document["mappings"])
    columns = {str(c.header): list(c.cells) for c in table.columns}
    assert columns["lag"] == ["[yellow]4[/yellow]"]
    assert columns["pending"] == ["6"]  # by choice: no colour
    assert " 6 " in render(table)


def change(**over: Any) -> dict[str, Any]:
    row = {
        "mapping_id": 1,
        "source_node": "s" * 64,
        "seq": 9,
        "op": "write",
        "path": "a.txt",
        "size": 2048,
        "reported_at": 1000.0,
        "committed_targets": 1,
        "total_targets": 2,
    }
    return {**row, **over}


def test_log_rows_are_labelled_and_rendered() -> None:
    rows = [label(change(), {1: "www"}, {})]
    assert rows[0]["mapping"] == "www"
    assert "a.txt" in render(changes_table(rows)) and "1/2" in render(changes_table(rows))
    text = to_csv(rows, CHANGE_COLUMNS)
    assert text.splitlines()[1].startswith("www,1,9,write,a.txt,2048,1000.0,1,2")
    # a row of a journal replaced since (the source's state was recreated): history, not pending
    old = [label(change(journal_id="1" * 32, replaced=True, committed_targets=0), {1: "www"}, {})]
    shown = render(changes_table(old))
    assert "old journal" in shown and "0/2" not in shown
    assert to_csv(old, CHANGE_COLUMNS).splitlines()[1].endswith(f",0,2,{'1' * 32},True")
    failure = {
        "id": 1,
        "mapping_id": 2,
        "source_node": "s",
        "target_node": "t" * 64,
        "seq": 3,
        "path": "b",
        "error": "disk full",
        "at": 1.0,
        "attempts": 2,
        "resolved_at": None,
        "journal_id": "1" * 32,
    }
    named = label(failure, {}, {"t" * 64: "web2"})
    assert to_csv([named], EXCEPTION_COLUMNS).splitlines()[1].endswith(f",2,,{'1' * 32}")
    assert (named["mapping"], named["target"]) == ("#2", "web2")
    assert "disk full" in render(exceptions_table([named])) and "open" in render(
        exceptions_table([named])
    )


# File names and paths hold brackets ("[draft] notes.txt", "img[1].jpg"); rich would read
# "[draft]" as a style tag and drop it, and "[/x]" as a closing tag and raise MarkupError.
BRACKETED = ("[draft] notes.txt", "old[/x]/a.txt", "[bold]b")


@pytest.mark.parametrize("path", BRACKETED)
def test_paths_with_brackets_are_shown_as_they_are(path: str) -> None:
    wide = Console(file=io.StringIO(), width=400, color_system=None)

    def shown(renderable: Any) -> str:
        wide.print(renderable)
        return wide.file.getvalue()  # type: ignore[attr-defined]

    assert path in shown(changes_table([label(change(path=path), {1: "www"}, {})]))
    failure = {**change(path=path), "id": 1, "target_node": "t", "error": f"cannot write {path}"}
    failure |= {"at": 1.0, "attempts": 1, "resolved_at": None}
    assert f"cannot write {path}" in shown(exceptions_table([label(failure, {1: "www"}, {})]))
    target = {"target_name": "web1", "path": path, "watermark": 1, "lag": 0}
    target |= {"open_exceptions": 0, "updated_at": None}
    status = {"name": "www", "source": "origin", "source_path": path, "enabled": True}
    assert f"origin:{path}" in shown(status_mappings_table([{**status, "targets": [target]}]))
    assert f"web1:{path}" in shown(status_mappings_table([{**status, "targets": [target]}]))


def stat(**over: Any) -> dict[str, Any]:
    row = {
        "key": "www",
        "files": 4,
        "wire_bytes": 4096,
        "failures": 1,
        "failed_attempts": 2,
        "open_failures": 0,
        "changes": 2,
        "change_bytes": 3000,
        "file_ms_p50": 1.25,
        "file_ms_p95": 9.0,
        "file_ms_p99": None,
        "latency_ms_p50": 40.5,
        "latency_ms_p95": 80.0,
        "latency_ms_p99": None,
    }
    return {**row, **over}


def test_stats_table_shows_changes_only_by_mapping_and_day() -> None:
    out = render(stats_table([stat()], "mapping"))
    assert "changes" in out and "4.0 KiB" in out and "1.2" in out
    assert "latency" in out and "40.5" in out and "80.0" in out
    out = render(stats_table([stat(key="web1", changes=None, change_bytes=None)], "server"))
    assert "change bytes" not in out and "web1" in out


def test_stats_csv_export_matches_the_columns() -> None:
    text = stats_csv([StatOut(**stat())])
    header, line = text.splitlines()
    assert header == ",".join(StatOut.model_fields)
    assert line == "www,4,4096,1,2,0,2,3000,1.25,9.0,,40.5,80.0,"


def test_parse_time_forms() -> None:
    assert parse_time(None) is None
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time("1970-01-02") == 86_400.0
    assert parse_time("1970-01-01T01:00:00+01:00") == 0.0
    with pytest.raises(ConfigError):
        parse_time("yesterday")


def test_mapping_locations_and_body() -> None:
    assert split_location("web1:/var/www") == ("web1", "/var/www")
    for bad in ("web1", ":/x", "web1:relative"):
        with pytest.raises(ConfigError):
            split_location(bad)
    body = mapping_body("www", ("o", "/srv"), [("w1", "/a"), ("w2", "/b")], enabled=True)
    assert body == {
        "name": "www",
        "source": "o",
        "source_path": "/srv",
        "enabled": True,
        "targets": [{"server": "w1", "path": "/a"}, {"server": "w2", "path": "/b"}],
    }
    listed = [
        {
            "id": 1,
            "name": "www",
            "source_name": "o",
            "source_path": "/srv",
            "include": ["x"],
            "exclude": [],
            "durability": "safe",
            "enabled": True,
            "targets": [{"name": "w1", "path": "/a"}],
        }
    ]
    out = render(mappings_table(listed))
    assert "o:/srv" in out and "w1:/a" in out and "+x" in out


@pytest.mark.parametrize(
    ("shown", "listed", "status"),
    [
        ({"enabled": True}, " enabled ", ""),  # an older master: no state
        ({"enabled": False}, " disabled ", "(disabled)"),
        ({"enabled": True, "state": "enabled"}, " enabled ", ""),
        (
            {"enabled": True, "state": "source_revoked"},
            "idle: source revoked",
            "(idle: source revoked)",
        ),
    ],
)
def test_mapping_tables_show_what_the_agents_run(shown: dict, listed: str, status: str) -> None:
    """Was: a mapping whose source is revoked, sent disabled, was listed as enabled."""
    mapping = {"id": 1, "name": "www", "source_name": "o", "source": "o", "source_path": "/srv"}
    mapping |= {"include": [], "exclude": [], "durability": "safe", "targets": []} | shown
    assert listed in render(mappings_table([mapping]))
    out = render(status_mappings_table([mapping | {"targets": [_STATUS_TARGET]}]))
    assert status in out
    assert ("disabled" in out, "revoked" in out) == ("disabled" in status, "revoked" in status)


_STATUS_TARGET = {
    "target_name": "w1",
    "path": "/a",
    "watermark": 1,
    "lag": 0,
    "open_exceptions": 0,
    "updated_at": None,
}


def test_a_mode_mask_is_octal_bits_of_group_and_others() -> None:
    assert parse_mode_mask("022") == 0o022
    with pytest.raises(ConfigError, match="removes the owner's bits"):
        parse_mode_mask("200")
    with pytest.raises(ConfigError, match="octal"):
        parse_mode_mask("9")


def test_piped_tables_are_whole_and_narrow_ones_fold_instead_of_cutting() -> None:
    """Piped, rich assumed 80 columns and cut the stats table to "ma… ch… 381…"; on an
    80-column terminal a value is folded onto more lines, never cut."""
    row = {
        "key": "mapping-with-a-long-name",
        "files": 38123456,
        "wire_bytes": 862_000_000_000,
        "failures": 3,
        "open_failures": 1,
        "file_ms_p50": 12.3,
        "file_ms_p95": 120.5,
        "file_ms_p99": 1234.5,
        "latency_ms_p50": 55.5,
        "latency_ms_p95": 555.5,
        "latency_ms_p99": 5555.5,
        "changes": 381234,
        "change_bytes": 862_000_000,
    }
    script = subprocess.run(  # the CLI's own console, its output a pipe
        [
            sys.executable,
            "-c",
            "import json, sys; from relaysync.cli._client import console; "
            "from relaysync.cli.stats_cmd import stats_table; "
            "console.print(stats_table([json.loads(sys.argv[1])], 'mapping'))",
            json.dumps(row),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )
    assert script.returncode == 0, script.stderr
    assert "…" not in script.stdout
    assert "mapping-with-a-long-name" in script.stdout and "latency p99 ms" in script.stdout
    narrow = Console(file=io.StringIO(), width=80, color_system=None)
    narrow.print(stats_table([row], "mapping"))
    text = narrow.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text and "381" in text


def test_an_empty_fleet_says_how_to_add_servers() -> None:
    """`status` and `topology` on a new master printed empty tables, or only "topology"."""
    with a_server(200, b"[]", "application/json") as url:
        status = CliRunner().invoke(app, ["status", "--master", url, "--token", "t"])
    assert status.exit_code == 0, status.output
    assert "No server has joined yet" in " ".join(status.output.split())
    with a_server(200, b'{"regions": []}', "application/json") as url:
        topology = CliRunner().invoke(app, ["topology", "--master", url, "--token", "t"])
    assert topology.exit_code == 0, topology.output
    assert "relaysync agent --master URL" in " ".join(topology.output.split())


@pytest.mark.parametrize("command", [["mapping", "set", "m"], ["mapping", "add", "m"]])
def test_a_bad_symlinks_choice_is_refused_before_anything_is_sent(command: list[str]) -> None:
    """`--symlinks maybe` reached the master, which listed the choices as '', 'safe' or 'any'
    (the option calls the first "default"); with `mapping add`, after the mapping was made."""
    extra = ["--source", "src:/a", "--target", "t1:/b"] if command[1] == "add" else []
    result = CliRunner().invoke(
        app, [*command, *extra, "--symlinks", "maybe", "--master", "http://127.0.0.1:1"]
    )
    assert result.exit_code == 2, result.output
    assert "--symlinks 'maybe': give one of default, safe, any" in " ".join(result.output.split())


class _FakeMaster:
    """The mode and status documents `relaysync send` polls, as a master answers them."""

    def __init__(self, mode: dict[str, Any], marks: list[int]) -> None:
        self.mode, self.marks = mode, marks

    def get(self, path: str, **_: Any) -> Any:
        if path.endswith("/mode"):
            return self.mode
        if path.endswith("/status"):
            return {"source_node": "n" * 64, "targets": [{"watermark": m} for m in self.marks]}
        return {"name": "src", "state": "up"}  # /api/servers/{node}


@pytest.mark.parametrize(
    ("mode", "marks", "outcome"),
    [
        # the previous release's seq, held by every target, before the source took this one
        ({"release": 2, "released_upto": 42, "released_release": 1}, [42], "not taken"),
        # another send came after ours: the source took it, and it covers ours
        ({"release": 3, "released_upto": 50, "released_release": 3}, [50, 50], 50),
        # taken, nothing journaled since the source started: nothing to send
        ({"release": 2, "released_upto": 0, "released_release": 2}, [0], 0),
        # a master from before released_release: taken once its seq is under our number
        ({"release": 2, "released_upto": 42}, [42], 42),
    ],
)
def test_send_follows_the_release_the_source_took(
    mode: dict[str, Any], marks: list[int], outcome: object
) -> None:
    client = _FakeMaster(mode, marks)
    if outcome == "not taken":
        with pytest.raises(SendNotTaken, match="src \\(up\\)"):
            _follow_release(client, "m", 2, 0.3, quiet=True)  # type: ignore[arg-type]
    else:
        done = _follow_release(client, "m", 2, 5.0, quiet=True)  # type: ignore[arg-type]
        assert done["upto_seq"] == outcome


def test_the_cli_runs_with_its_stdout_closed() -> None:
    """`relaysync ... >&-` (a service manager with no stdout): the piped-width check asked a
    stdout of None whether it was a terminal, and every command died at import."""
    result = subprocess.run(
        [sys.executable, "-m", "relaysync", "master", "--help"],
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(1),
    )
    assert result.returncode == 0, result.stderr
