"""Names, paths and errors from the master that hold a terminal's control characters: every
table, tree and line the operator commands print shows them as visible escapes, and never
writes ESC, a bidirectional control or a raw newline of theirs to the terminal."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from typing import Any

import pytest
from rich.console import Console

from relaysync.cli._client import to_csv
from relaysync.cli.log_cmd import CHANGE_COLUMNS, changes_table, exceptions_table
from relaysync.cli.mapping_cmd import mappings_table
from relaysync.cli.nmjob_cmd import conflicts_table, jobs_table
from relaysync.cli.routes_cmd import routes_view
from relaysync.cli.stats_cmd import stats_table
from relaysync.cli.status_cmd import mappings_table as status_mappings_table
from relaysync.cli.status_cmd import servers_table
from relaysync.cli.token_cmd import tokens_table
from relaysync.cli.topology_cmd import topology_tree

# OSC 0 (window title), CSI 2J (clear screen), SGR red, an OSC 8 hyperlink to another site
ESCAPES = (
    "osc\x1b]0;TITLE\x07clear\x1b[2J\x1b[31mRED\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\"
)
HOSTILE = f"{ESCAPES}rtl\u202etxt.exe new\nline\x9b1m"
NOT_SHOWN = ("\x1b", "\x07", "\x9b", "\u202e")


def render(renderable: Any) -> str:
    """What the CLI writes to a pipe (no colours of its own: every ESC would be the data's)."""
    console = Console(file=io.StringIO(), width=1000, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def assert_shown_safely(out: str) -> None:
    for raw in NOT_SHOWN:
        assert raw not in out, f"{raw!r} reached the terminal: {out!r}"
    assert "osc\\x1b]0;TITLE\\x07clear\\x1b[2J" in out  # shown, escaped, in one piece
    assert "rtl\\u202etxt.exe new\\x0aline\\x9b1m" in out  # the newline did not break the row


def change(**over: Any) -> dict[str, Any]:
    row = {"mapping": HOSTILE, "mapping_id": 1, "seq": 9, "op": "write", "path": HOSTILE}
    row |= {"size": 1, "reported_at": 1000.0, "committed_targets": 1, "total_targets": 1}
    return {**row, **over}


def failure() -> dict[str, Any]:
    row = {**change(), "id": 1, "target": HOSTILE, "target_node": "t", "error": HOSTILE}
    return row | {"at": 1.0, "attempts": 1, "resolved_at": None}


def server() -> dict[str, Any]:
    row = {"name": HOSTILE, "region": HOSTILE, "group": HOSTILE, "state": HOSTILE}
    return row | {"health": HOSTILE, "last_seen": None, "cert_expires_in_s": None}


def status_mapping() -> dict[str, Any]:
    target = {"target_name": HOSTILE, "path": "/b", "watermark": 1, "lag": 0, "pending": 0}
    target |= {"open_exceptions": 0, "updated_at": None}
    row = {"name": HOSTILE, "source": HOSTILE, "source_path": "/a", "enabled": True}
    return row | {"source_error": HOSTILE, "source_error_since": 1.0, "targets": [target]}


def mapping() -> dict[str, Any]:
    row = {"id": 1, "name": HOSTILE, "source_name": HOSTILE, "source_path": "/a"}
    row |= {"targets": [{"name": HOSTILE, "path": "/b"}], "include": [HOSTILE], "exclude": []}
    return row | {"durability": HOSTILE, "enabled": True}


def nm_job() -> dict[str, Any]:
    member = {"source_name": HOSTILE, "source_path": "/a", "mapping_id": 2, "source_node": "s"}
    row = {"id": 1, "name": HOSTILE, "members": [member], "conflict": HOSTILE}
    return row | {"targets": [{"name": HOSTILE, "path": "/b", "node_id": "t"}], "durability": "x"}


def conflict() -> dict[str, Any]:
    row = {"path": HOSTILE, "op": HOSTILE, "target_node": "t", "winner_node": "w"}
    return row | {"loser_node": "l", "reason": HOSTILE}


def routes() -> dict[str, Any]:
    return {
        "source": HOSTILE,
        "mode": HOSTILE,
        "route_epoch": 1,
        "hops": [{"parent": HOSTILE, "child": "c", "level": HOSTILE}],
        "unreachable": [HOSTILE],
        "failed": [{"target": HOSTILE, "failed_at": 1.0, "reason": HOSTILE, "policy": HOSTILE}],
        "failed_hops": [{"parent": HOSTILE, "child": HOSTILE, "until": 1.0, "error": HOSTILE}],
        "recoveries": [{"target": HOSTILE, "trigger": HOSTILE, "from_seq": 1, "goal_seq": 2}],
    }


def topology() -> dict[str, Any]:
    s = {"name": HOSTILE, "capacity_weight": 1, "state": HOSTILE, "topology_locked": False}
    s |= {"health": "ok"}
    return {"regions": [{"name": HOSTILE, "groups": [{"name": HOSTILE, "servers": [s]}]}]}


def stat() -> dict[str, Any]:
    row: dict[str, Any] = {"key": HOSTILE, "files": 1, "wire_bytes": 1, "failures": 0}
    row |= {"open_failures": 0, "changes": 1, "change_bytes": 1}
    return row | {f"{k}_p{p}": None for k in ("file_ms", "latency_ms") for p in (50, 95, 99)}


TOKENS = (
    [
        {
            "id": HOSTILE,
            "created_at": 1.0,
            "expires_at": None,
            "expired": False,
            "created_by": HOSTILE,
        }
    ],
    [{"id": 7, "name": HOSTILE, "created_at": 1.0, "scope": HOSTILE, "created_by": HOSTILE}],
)


@pytest.mark.parametrize(
    "renderable",
    [
        pytest.param(lambda: changes_table([change()]), id="log"),
        pytest.param(lambda: exceptions_table([failure()]), id="log --failed"),
        pytest.param(lambda: servers_table([server()]), id="status servers"),
        pytest.param(lambda: status_mappings_table([status_mapping()]), id="status mappings"),
        pytest.param(lambda: mappings_table([mapping()]), id="mapping list"),
        pytest.param(lambda: jobs_table([nm_job()]), id="nmjob list"),
        pytest.param(lambda: conflicts_table([conflict()], {}), id="nmjob show"),
        pytest.param(lambda: routes_view(routes()), id="routes"),
        pytest.param(lambda: topology_tree(topology()), id="topology"),
        pytest.param(lambda: stats_table([stat()], "mapping"), id="stats"),
        pytest.param(lambda: tokens_table(*TOKENS), id="token list"),
    ],
)
def test_every_table_shows_control_characters_as_escapes(renderable: Any) -> None:
    assert_shown_safely(render(renderable()))


def test_the_log_csv_has_visible_escapes_and_no_formulas() -> None:
    rows = [change(path="=cmd|' -c calc'!A0.txt"), change(mapping="+x", path=HOSTILE)]
    text = to_csv(rows, CHANGE_COLUMNS)
    assert_shown_safely(text)
    header, first, second = csv.reader(io.StringIO(text))  # one line a row: no raw newline
    assert first[header.index("path")] == "'=cmd|' -c calc'!A0.txt"
    assert second[header.index("mapping")] == "'+x"
    assert first[header.index("size")] == "1"


def test_the_masters_csv_is_reprinted_with_visible_escapes() -> None:
    """`stats --csv` prints the master's CSV: its cells raw (a spreadsheet's download)."""
    from relaysync._util.untrusted_text import visible  # new, like reprinted_csv: the old code
    from relaysync.cli._client import reprinted_csv  # echoed the master's CSV as it came

    raw = io.StringIO()
    writer = csv.writer(raw, lineterminator="\n")
    writer.writerows([["key", "files"], [HOSTILE, "-3.5"], ["=1", "2"]])
    text = reprinted_csv(raw.getvalue())
    assert_shown_safely(text)
    assert list(csv.reader(io.StringIO(text)))[1:] == [
        [visible(HOSTILE), "-3.5"],  # a number stays one
        ["'=1", "2"],  # an older master's formula, neutralised here
    ]


def test_a_service_logs_a_hostile_name_as_visible_escapes_and_keeps_its_traceback() -> None:
    """`relaysync master|agent` log lines quote file names: one with ESC sequences reached the
    operator's terminal (or journal) raw, one with a newline forged a log line."""
    code = (
        "import logging\n"
        "from relaysync.cli._run import setup_logging\n"
        "setup_logging(json_logs=False)\n"
        "log = logging.getLogger('relaysync.test')\n"
        "log.warning('cannot read %s', 'a\\x1b]0;PWNED\\x07\\nFAKE ERROR line\\u202e.txt')\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    log.exception('failed')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)
    err = done.stderr.decode()
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "a\\x1b]0;PWNED\\x07\\x0aFAKE ERROR line\\u202e.txt" in err
    assert not any(line.startswith("FAKE") for line in err.splitlines())
    assert "Traceback (most recent call last):\n" in err  # a traceback keeps its lines


def test_a_service_logs_a_hostile_name_in_an_exception_as_visible_escapes() -> None:
    """An error's message names the file (relaysync's own errors put it in as it is): its text
    below the log line went out raw, ESC sequences and all; its lines are kept."""
    code = (
        "import logging\n"
        "from relaysync.cli._run import setup_logging\n"
        "setup_logging(json_logs=False)\n"
        "try:\n"
        "    raise RuntimeError('cannot read a\\x1b]0;PWNED\\x07\\u202e.txt')\n"
        "except RuntimeError:\n"
        "    logging.getLogger('relaysync.test').exception('cannot read')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)
    err = done.stderr.decode()
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "Traceback (most recent call last):\n" in err
    assert "RuntimeError: cannot read a\\x1b]0;PWNED\\x07\\u202e.txt" in err
