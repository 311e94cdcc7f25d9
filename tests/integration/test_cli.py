"""Operator CLI end to end: `python -m relaysync status|log|stats|mapping|token` against a real fleet."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaysync.auth.ca import fingerprint, make_key_and_csr
from relaysync.auth.tokens import hash_token, split_join_string
from relaysync.testing.cluster import Cluster, wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 60.0
SIZES = (0, 1, 1000, 65_536, 300_000)  # bytes of each file the test writes


def cli(
    fleet: Fleet | Cluster, *args: str, env: dict[str, str] | None = None, token: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run `python -m relaysync ARGS` against the fleet's master, with the admin token by default."""
    cluster = fleet.cluster if isinstance(fleet, Fleet) else fleet
    token = token or (cluster.master_dir / "admin-token").read_text().strip()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "relaysync",
            *args,
            "--master",
            cluster.api_url,
            "--token",
            token,
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=base | (env or {}),
    )


def cli_json(fleet: Fleet | Cluster, *args: str) -> Any:
    result = cli(fleet, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_log_and_stats_report_what_was_written(fleet: Fleet) -> None:
    base = fleet.base / "cli"
    src, dsts = base / "source", [base / "target-t1", base / "target-t2"]
    src.mkdir(parents=True)
    created = cli_json(
        fleet,
        "mapping",
        "add",
        "cli",
        "--source",
        f"src:{src}",
        "--target",
        f"t1:{dsts[0]}",
        "--target",
        f"t2:{dsts[1]}",
    )
    assert created["name"] == "cli" and {t["name"] for t in created["targets"]} == {"t1", "t2"}
    assert "cli" in [m["name"] for m in cli_json(fleet, "mapping", "list")]
    wait_until(
        lambda: all(d.is_dir() for d in dsts), timeout_s=CONVERGE_TIMEOUT_S, what="targets opened"
    )

    for i, size in enumerate(SIZES):
        (src / f"file{i}.bin").write_bytes(os.urandom(size))
    fleet.wait_converged(src, dsts)
    expected_files, expected_bytes = len(SIZES), sum(SIZES)

    seen: list[Any] = []

    def stats_settled() -> bool:
        # polled through the API: a CLI process per poll cost a second or more each under
        # coverage; the CLI's own answer is read once the figures are all in
        r = fleet.cluster.api.get("/api/stats", params={"by": "mapping"})
        row = {r["key"]: r for r in r.json()}.get("cli")
        seen[:] = [row]
        return bool(row and row["files"] >= 2 * expected_files)

    try:
        wait_until(stats_settled, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.2, what="stats")
    except Exception:
        print(
            f"--- last stats row: {seen}\n--- job log: {cli_json(fleet, 'log', '--mapping', 'cli')}"
        )
        raise
    stats = {r["key"]: r for r in cli_json(fleet, "stats", "--by", "mapping")}["cli"]
    assert stats["files"] == 2 * expected_files  # each file committed on two targets
    assert stats["changes"] == expected_files and stats["change_bytes"] == expected_bytes
    assert stats["wire_bytes"] >= 2 * expected_bytes  # random data: no delta, no compression gain
    assert stats["failures"] == 0 and stats["file_ms_p50"] is not None

    status = cli_json(fleet, "status")
    mine = next(m for m in status["mappings"] if m["name"] == "cli")
    assert {t["target_name"] for t in mine["targets"]} == {"t1", "t2"}
    assert all(t["lag"] == 0 and t["watermark"] >= expected_files for t in mine["targets"])
    assert mine["open_exceptions"] == 0
    assert {s["name"]: s["state"] for s in status["servers"]} == {
        "src": "up",
        "t1": "up",
        "t2": "up",
    }

    log = cli_json(fleet, "log", "--mapping", "cli", "--limit", "100")
    writes = {r["path"]: r for r in log if r["op"] == "write"}
    assert {p: r["size"] for p, r in writes.items()} == {
        f"file{i}.bin": s for i, s in enumerate(SIZES)
    }
    assert all(r["committed_targets"] == r["total_targets"] == 2 for r in writes.values())
    assert cli_json(fleet, "log", "--mapping", "cli", "--failed") == []
    open_only = cli(fleet, "log", "--mapping", "cli", "--open")  # implies --failed (was ignored)
    assert open_only.returncode == 0 and "Failures" in open_only.stdout, open_only.stdout
    backwards = cli(fleet, "stats", "--since", "2030-01-01", "--until", "2020-01-01")
    assert backwards.returncode == 2 and "is not before until" in backwards.stderr  # was: nothing

    by_server = {r["key"]: r for r in cli_json(fleet, "stats", "--by", "server")}
    assert by_server["t1"]["files"] >= expected_files and by_server["t2"]["files"] >= expected_files

    exported = cli(fleet, "stats", "--by", "mapping", "--csv")
    assert exported.returncode == 0, exported.stderr
    header, *lines = exported.stdout.splitlines()
    assert header.startswith("key,files,wire_bytes,")
    assert any(line.startswith(f"cli,{2 * expected_files},") for line in lines)

    removed = cli_json(fleet, "mapping", "remove", "cli")
    assert removed["removed"]["name"] == "cli"
    missing = cli(fleet, "log", "--mapping", "cli")
    assert missing.returncode == 15 and "not found" in missing.stderr


def test_bad_token_exits_with_the_auth_code(fleet: Fleet) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaysync",
            "status",
            "--master",
            fleet.cluster.api_url,
            "--token",
            "wrong",
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")},
    )
    assert result.returncode == 12 and "invalid token" in result.stderr


def test_master_found_from_its_data_dir(fleet: Fleet) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
    env["RELAYSYNC_MASTER_DATA"] = str(fleet.cluster.master_dir)
    result = subprocess.run(
        [sys.executable, "-m", "relaysync", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["servers_up"] == 3


def join_status(cluster: Cluster, token: str, name: str) -> int:
    """POST /api/join as an agent does; the HTTP status."""
    _key, csr = make_key_and_csr(name)
    body = {"token": token, "name": name, "csr_pem": csr.decode()}
    return httpx.post(f"{cluster.api_url}/api/join", json=body, timeout=CLI_TIMEOUT_S).status_code


def test_tokens_are_listed_and_revoked_and_the_default_join_token_stays_revoked(
    tmp_path: Path,
) -> None:
    """A master alone: tokens made, listed and revoked with `relaysync token`; the revoked default
    join token is not made valid again by a restart, which warns about it."""
    cluster = Cluster(tmp_path / "tokens")
    cluster.start_master()
    try:
        default = cluster.join_token  # the file holds a join string: token.ca-fingerprint
        joiner = cli(cluster, "token", "create-join", "--ttl-s", "3600")
        assert joiner.returncode == 0, joiner.stderr
        join_token = joiner.stdout.strip()  # the join string alone on stdout, for scripts
        assert join_token.startswith("rsj_") and "shown only this once" in joiner.stderr
        ca_pem = (cluster.master_dir / "ca" / "ca.pem").read_bytes()
        default_token, default_ca = split_join_string(default)
        new_token, new_ca = split_join_string(join_token)
        assert default_ca == new_ca == fingerprint(ca_pem)
        api = cli_json(cluster, "token", "create-api", "departed colleague")

        listed = cli_json(cluster, "token", "list")
        join_ids = [t["id"] for t in listed["join"]]
        assert join_ids == [hash_token(default_token)[:12], hash_token(new_token)[:12]]
        assert [(t["id"], t["name"]) for t in listed["api"]] == [(api["id"], "departed colleague")]
        table = cli(cluster, "token", "list", env={"COLUMNS": "200"})  # rows unwrapped
        assert table.returncode == 0 and all(i in table.stdout for i in join_ids)
        assert "departed colleague" in table.stdout and "admin-token" in table.stdout
        for secret in (default_token, new_token, api["token"]):
            assert secret not in table.stdout + json.dumps(listed)

        assert join_status(cluster, join_token, "web-1") == 200
        assert cli(cluster, "token", "revoke", "join", join_ids[1]).returncode == 0
        assert join_status(cluster, join_token, "web-2") == 403
        assert join_status(cluster, default, "web-2") == 200  # the other one still joins

        assert cli(cluster, "status", token=api["token"]).returncode == 0
        assert cli(cluster, "token", "revoke", "api", str(api["id"])).returncode == 0
        refused = cli(cluster, "status", token=api["token"])
        assert refused.returncode == 12 and "invalid token" in refused.stderr
        unknown = cli(cluster, "token", "revoke", "api", str(api["id"]))
        assert unknown.returncode == 15 and "not found" in unknown.stderr

        assert cli(cluster, "token", "revoke", "join", join_ids[0]).returncode == 0
        assert cluster.master is not None
        cluster.master.stop()
        cluster.start_master()
        assert cluster.join_token == default  # kept in its file, not replaced by a valid one
        assert join_status(cluster, default, "web-3") == 403
        log = (tmp_path / "tokens" / "master.log").read_text()
        assert "default join token" in log and "revoked" in log
        assert cli_json(cluster, "token", "list")["join"] == []
    finally:
        cluster.stop()


def test_a_read_token_reads_but_cannot_mint_tokens(tmp_path: Path) -> None:
    """`token create-api --scope read`: the token runs `status` and `token list`, but creating a
    token with it is refused with the scope named; the listing shows scopes and creators."""
    cluster = Cluster(tmp_path / "scopes")
    cluster.start_master()
    try:
        read = cli_json(cluster, "token", "create-api", "grafana", "--scope", "read")
        admin = cli_json(cluster, "token", "create-api", "ops")  # admin, as before scopes
        assert (read["scope"], admin["scope"]) == ("read", "admin")
        assert cli(cluster, "status", token=read["token"]).returncode == 0
        assert cli(cluster, "token", "list", token=read["token"]).returncode == 0
        for args in (("create-api", "spare"), ("create-join",), ("revoke", "api", "1")):
            refused = cli(cluster, "token", *args, token=read["token"])
            assert refused.returncode != 0 and "scope 'read'" in refused.stderr, refused.stderr
        minted = cli(cluster, "token", "create-api", "ci", "--scope", "read", token=admin["token"])
        assert minted.returncode == 0, minted.stderr
        listed = cli_json(cluster, "token", "list")["api"]
        assert [(t["name"], t["scope"], t["created_by"]) for t in listed] == [
            ("grafana", "read", "admin"),
            ("ops", "admin", "admin"),
            ("ci", "read", f"api:{admin['id']}"),
        ]
        table = cli(cluster, "token", "list", env={"COLUMNS": "200"}).stdout
        assert f"api:{admin['id']}" in table and "read" in table
    finally:
        cluster.stop()


def test_servers_are_removed_so_their_name_can_join_again_and_revoked(tmp_path: Path) -> None:
    """`relaysync server remove|revoke NAME`: a rebuilt machine's name was taken for good from
    the CLI (the join refusal pointed at a raw DELETE /api/servers/NAME)."""
    cluster = Cluster(tmp_path / "servers")
    cluster.start_master()
    try:
        for name in ("web-1", "web-2"):
            assert join_status(cluster, cluster.join_token, name) == 200
        assert join_status(cluster, cluster.join_token, "web-1") == 409  # taken
        removed = cli(cluster, "server", "remove", "web-1")
        assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
        assert join_status(cluster, cluster.join_token, "web-1") == 200  # free again
        revoked = cli(cluster, "server", "revoke", "web-2")
        assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
        assert "relaysync server remove web-2" in " ".join(revoked.stdout.split())
        assert join_status(cluster, cluster.join_token, "web-2") == 409  # listed until removed
        assert cli(cluster, "server", "remove", "web-2").returncode == 0
        assert join_status(cluster, cluster.join_token, "web-2") == 200
        unknown = cli(cluster, "server", "remove", "no-such")
        assert unknown.returncode == 15 and "not found" in unknown.stderr.lower()
        slash = cli(cluster, "server", "remove", "no/such")  # no server name has one: refused
        assert slash.returncode == 2 and "(no '/')" in slash.stderr, slash.stderr
    finally:
        cluster.stop()


def test_names_with_url_characters_address_their_own_mapping(fleet: Fleet) -> None:
    """`mapping remove 'blog#old'` asked for /api/mappings/blog (httpx reads "#old" as a
    fragment) and removed the mapping `blog`; a "/" name read another mapping's sub-resource."""
    names = ["blog", "blog#old", "blog?x=1", "blog/status", "blog old", "100%"]
    base = fleet.base / "urlnames"
    ids = {}
    for i, name in enumerate(names):
        src = base / f"s{i}"
        src.mkdir(parents=True)
        ids[name] = fleet.cluster.create_mapping(name, "src", src, [("t1", base / f"d{i}")])["id"]
    for name in names[1:]:
        assert cli_json(fleet, "routes", name)["mapping_id"] == ids[name]
        removed = cli_json(fleet, "mapping", "remove", name)
        assert removed["removed"]["name"] == name
    left = [m["name"] for m in cli_json(fleet, "mapping", "list")]
    assert "blog" in left and not set(names[1:]) & set(left)
    missing = cli(fleet, "mapping", "remove", "blog/status")
    assert missing.returncode == 15 and "'blog/status' not found" in missing.stderr
    assert cli_json(fleet, "mapping", "remove", "blog")["removed"]["name"] == "blog"


# File names a source may hold: terminal escape sequences (OSC 0 sets the window title, CSI 2J
# clears the screen, OSC 8 links to another site), a right-to-left override, a newline, and
# cells a spreadsheet runs as formulas
HOSTILE_FILES = (
    "osc\x1b]0;TITLE-PWNED\x1b\\clear\x1b[2J\x1b[31mRED\x1b]8;;http:evil.example\x1b\\link.txt",
    "rtl\u202etxt.exe",
    "new\nline.txt",
    "=cmd|' -c calc'!A0.txt",
    '=HYPERLINK("http:evil.example","open me")',
)
HOSTILE_MAPPING = "+evil\x1b]0;MAPPING-TITLE\x07\u202e"
RAW_CONTROLS = ("\x1b", "\x07", "\u202e")


WIDE = {"COLUMNS": "400"}  # CI's piped width is 80: the status table cut the mapping's name


def test_hostile_names_reach_the_operators_terminal_as_visible_escapes(fleet: Fleet) -> None:
    """Was: `log`, `status`, `mapping list`, `stats` and `log --csv` wrote a file's or a
    mapping's ESC sequences and bidirectional overrides to the operator's terminal as they came,
    a newline broke the table's row, and `--csv` cells started formulas."""
    base = fleet.base / "hostile"
    src, dst = base / "source", base / "target-t1"
    src.mkdir(parents=True)
    mapping = fleet.cluster.create_mapping(HOSTILE_MAPPING, "src", src, [("t1", dst)])
    mid = str(mapping["id"])
    wait_until(dst.is_dir, timeout_s=CONVERGE_TIMEOUT_S, what="target opened")
    for name in HOSTILE_FILES:
        (src / name).write_text("x")

    def logged() -> bool:  # through the API: the CLI's output is what the checks below read
        params = {"mapping": mid, "limit": 100}
        rows = fleet.cluster.api.get("/api/jobs", params=params).json()
        done = {r["path"] for r in rows if r["committed_targets"] == r["total_targets"]}
        return done >= set(HOSTILE_FILES)

    wait_until(logged, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.3, what="hostile names logged")
    for args in (
        ("log", "--mapping", mid),
        ("status",),
        ("mapping", "list"),
        ("stats", "--by", "mapping"),
        ("log", "--mapping", mid, "--csv"),
        ("stats", "--by", "mapping", "--csv"),
    ):
        result = cli(fleet, *args, env=WIDE)  # no cell cut short: each name shows whole
        assert result.returncode == 0, result.stderr
        for raw in RAW_CONTROLS:
            assert raw not in result.stdout, f"{args}: {raw!r} reached the terminal"
        assert "\\x1b]0;" in result.stdout, args  # shown, as an escape
    table = cli(fleet, "log", "--mapping", mid, env=WIDE).stdout
    assert "rtl\\u202etxt.exe" in table and "new\\x0aline.txt" in table  # one row each

    header, *rows = csv_rows(cli(fleet, "log", "--mapping", mid, "--csv").stdout)
    paths = {r[header.index("path")] for r in rows}
    assert {"'=cmd|' -c calc'!A0.txt", "new\\x0aline.txt"} <= paths
    assert '\'=HYPERLINK("http:evil.example","open me")' in paths
    assert {r[header.index("mapping")] for r in rows} == {"'+evil\\x1b]0;MAPPING-TITLE\\x07\\u202e"}
    header, *rows = csv_rows(cli(fleet, "stats", "--by", "mapping", "--csv").stdout)
    assert "'+evil\\x1b]0;MAPPING-TITLE\\x07\\u202e" in {r[0] for r in rows}

    missing = cli(fleet, "log", "--mapping", "gone\x1b]0;ERROR-TITLE\x07")  # quoted in the error
    assert missing.returncode == 15 and "\x1b" not in missing.stderr, missing.stderr
    assert "gone\\x1b]0;ERROR-TITLE\\x07" in missing.stderr


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))
