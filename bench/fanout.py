"""Fan-out benchmark: one 1 MiB change to N targets, relay tree against direct star against lsyncd.

For N = 1, 4, 8, 16 targets, one new file of 1 MiB of fresh random bytes is written in the
source folder; the clock starts when close() returns and stops when the LAST target holds the
identical file (every target copy polled: stat size, then compare content; 1 ms interval,
bounded 30 s).

relaysync: one Cluster (master, "src" in its own region "origin", t01..t16 as processes on
127.0.0.1). Target k sits in group (k-1) mod 4 of 2 regions x 2 groups (r1g1, r1g2, r2g1, r2g2),
so N >= 4 spreads evenly over 2 regions and 4 groups (N = 1: one region). Per N two mappings
from their own source folders: the relay **tree** (the master's default plan: one copy into each
region, one into each group, fan-out inside the group) and a direct **star** (PUT routing mode
manual, every hop from the source). "Source copies" = bytes the source agent's outgoing peer
links put on the wire for that change / 1 MiB, from the agent's live `peer_bytes_sent` figure
(framed protocol bytes, TLS record overhead not included) read from the master's /metrics
(the source agent reports every 0.2 s here). Cross-check: the kernel's `bytes_sent` of the
source agent's TCP sockets to the targets' peer ports (`ss -tinp`, TLS records included).
/proc/PID/io `wchar` is kept in the JSON only: it counts write(2)-family calls, and asyncio
sends with send(2), which wchar does not count, so it misses the peer traffic entirely.
lsyncd: Debian's lsyncd with N `sync { default.rsync, delay = 0 }` blocks from one source
folder to N local target folders. Durability pairs as in latency.py: relaysync safe (default)
against rsync --fsync; --durability fast against plain rsync.

Within each N the three variants are measured in turn, repeat after repeat (order rotated), so
load drift hits all of them alike; medians are reported.

Usage: python3 bench/fanout.py [--quick] [--ns 1,4,8,16] [--repeats K] [--durability safe|fast]
The last line printed is one JSON object of named results.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    console,
    emit_json,
    goal,
    machine_info,
    median,
    poll_until,
    print_machine,
    proc_wchar,
    prometheus_value,
    require_tools,
    rmtree,
    src_revision,
    ss_bytes_sent_by_pid,
    stop_child,
    tool_version,
    wait_all_identical,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

FILE_BYTES = 1024 * 1024
NS = (1, 4, 8, 16)
MAX_TARGETS = 16
REPEATS_QUICK, REPEATS_FULL = 3, 9
WARMUP = 1  # writes per variant before the measured ones (links open, routes in force)
POLL_S = 0.001
BOUND_S = 30.0
SETUP_TIMEOUT_S = 60.0
METRICS_INTERVAL_S = 0.2  # the source agent's report interval (targets keep the default)
STABLE_READS = 3  # the figure is settled when this many reads, one interval apart, agree
COPIES_SLACK = 0.02  # per region: framing, change records and pings on top of the file bytes
GROUPS = (("r1", "r1g1"), ("r1", "r1g2"), ("r2", "r2g1"), ("r2", "r2g2"))
VARIANTS = ("tree", "star", "lsyncd")


def target_name(k: int) -> str:
    return f"t{k:02d}"


def place_of(k: int) -> tuple[str, str]:
    """(region, group) of target k (1-based): round-robin over the 4 groups."""
    return GROUPS[(k - 1) % len(GROUPS)]


def regions_of(n: int) -> int:
    return len({place_of(k)[0] for k in range(1, n + 1)})


@dataclass
class Runs:
    ms: list[float] = field(default_factory=list)
    copies: list[float] = field(default_factory=list)
    copies_kernel: list[float] = field(default_factory=list)
    copies_wchar: list[float] = field(default_factory=list)
    timeouts: int = 0


@dataclass(frozen=True)
class Snapshot:
    """The source agent's sent bytes at one moment, three ways."""

    peer_bytes_sent: float  # its own figure: framed bytes on outgoing peer links
    wchar: int  # /proc/PID/io
    sockets: dict[tuple[str, str], int]  # kernel bytes_sent per socket to a target's peer port

    def kernel_since(self, before: Snapshot) -> int:
        return sum(v - before.sockets.get(k, 0) for k, v in self.sockets.items())


# ------------------------------------------------------------------ relaysync side


@dataclass
class OursMapping:
    mode: str  # tree | star
    mapping_id: int
    src: Path
    targets: list[Path]
    names: list[str]


class Fleet:
    """The relaysync cluster: master, src and t01..t16, all processes started (and stopped) here."""

    def __init__(self, work: Path, durability: str) -> None:
        from relaysync.testing.cluster import Cluster

        self.work = work
        self.durability = durability
        self.cluster = Cluster(work / "cluster")
        self.peer_ports: set[int] = set()

    def start(self) -> None:
        c = self.cluster
        c.start_master()
        c.start_agent(
            "src",
            region="origin",
            group="origin",
            wait=False,
            env={"RELAYSYNC_METRICS_INTERVAL_S": str(METRICS_INTERVAL_S)},
        )
        for k in range(1, MAX_TARGETS + 1):
            region, group = place_of(k)
            c.start_agent(target_name(k), region=region, group=group, wait=False)
        for name in c.agents:
            c.wait_agent_up(name)
        for name in c.agents:
            if name != "src":
                self.peer_ports.add(
                    int(c.api.get(f"/api/servers/{name}").json()["address"].rsplit(":", 1)[1])
                )
        console.print(
            f"  fleet up: master {c.api_url}, src (origin) + {MAX_TARGETS} targets over "
            f"{', '.join(g for _, g in GROUPS)}"
        )

    @property
    def src_pid(self) -> int:
        return self.cluster.agents["src"].process.pid

    def create(self, n: int, mode: str) -> OursMapping:
        base = self.work / f"ours-{mode}-n{n}"
        src = base / "src"
        src.mkdir(parents=True)
        names = [target_name(k) for k in range(1, n + 1)]
        targets = [base / name for name in names]
        m = self.cluster.create_mapping(
            f"fanout-{mode}-n{n}",
            "src",
            src,
            list(zip(names, targets, strict=True)),
            durability=self.durability,
        )
        mid = int(m["id"])
        if mode == "star":
            r = self.cluster.api.put(
                f"/api/mappings/{mid}/routing",
                json={"mode": "manual", "hops": [["src", name] for name in names]},
            )
            if r.status_code != 200:
                raise BenchError(f"PUT routing (star) for N={n}: {r.status_code} {r.text}")
        return OursMapping(mode, mid, src, targets, names)

    def wait_plan(self, m: OursMapping) -> dict[str, Any]:
        """Bounded wait until the master's plan places every target (and is a star for the star)."""

        def planned() -> dict[str, Any] | None:
            r = self.cluster.api.get(f"/api/mappings/{m.mapping_id}/routes")
            if r.status_code != 200:
                raise BenchError(f"GET routes: {r.status_code} {r.text}")
            routes = dict(r.json())
            hops = routes.get("hops", [])
            if {h["child"] for h in hops} != set(m.names) or routes.get("unreachable"):
                return None
            if m.mode == "star" and (
                routes.get("mode") != "manual" or any(h["parent"] != "src" for h in hops)
            ):
                return None
            return routes

        return dict(
            poll_until(
                planned,
                timeout_s=SETUP_TIMEOUT_S,
                interval_s=0.1,
                what=f"the master's {m.mode} plan for N={len(m.names)}",
            )
        )

    def settled_bytes(self, *, differ_from: float | None = None) -> Snapshot:
        """The source's peer_bytes_sent once STABLE_READS reads in a row agree (and, with
        `differ_from`, differ from it: the change's bytes have been reported), with wchar and the
        kernel's per-socket counters read at that moment."""
        seen: list[float] = []

        def settled() -> Snapshot | None:
            r = self.cluster.api.get("/metrics")
            value = (
                prometheus_value(r.text, "relaysync_peer_bytes_sent", server="src")
                if r.status_code == 200
                else None
            )
            if value is None:
                return None
            seen.append(value)
            tail = seen[-STABLE_READS:]
            if len(tail) == STABLE_READS and len(set(tail)) == 1 and value != differ_from:
                return Snapshot(
                    value,
                    proc_wchar(self.src_pid) or 0,
                    ss_bytes_sent_by_pid(self.src_pid, self.peer_ports),
                )
            return None

        return poll_until(
            settled,
            timeout_s=BOUND_S,
            interval_s=METRICS_INTERVAL_S * 1.2,
            what="the source's peer_bytes_sent to settle",
        )

    def route_summary(self, m: OursMapping) -> tuple[int, dict[str, str]]:
        """From the job log: the route of each target's latest advance; (targets fed by src, routes)."""
        routes: dict[str, str] = {}
        r = self.cluster.api.get(
            "/api/advances", params={"mapping": m.mapping_id, "limit": 10 * len(m.names)}
        )
        if r.status_code == 200:
            by_node = {
                a.get("node_id"): a["name"] for a in self.cluster.api.get("/api/servers").json()
            }
            for row in r.json():  # newest first
                name = by_node.get(row["target_node"], row["target_node"])
                routes.setdefault(name, row.get("route", ""))
        direct = sum(1 for route in routes.values() if route.count(">") == 1)
        return direct, routes


def write_new(src: Path, name: str) -> tuple[bytes, float]:
    data = os.urandom(FILE_BYTES)
    with open(src / name, "wb") as fh:
        fh.write(data)
    return data, time.perf_counter()


def probe(src: Path, targets: list[Path], what: str) -> None:
    """A small file must reach every target: the replication path is live."""
    data, t0 = os.urandom(64), 0.0
    for attempt in range(3):
        with open(src / f"probe-{attempt}.bin", "wb") as fh:
            fh.write(data)
        t0 = time.perf_counter()
        if (
            wait_all_identical(
                [t / f"probe-{attempt}.bin" for t in targets],
                data,
                t0,
                bound_s=SETUP_TIMEOUT_S / 3,
                poll_s=0.01,
            )
            is not None
        ):
            return
    raise BenchError(f"{what}: probe file never reached all targets")


def measure_ours(fleet: Fleet, m: OursMapping, name: str, runs: Runs | None) -> None:
    before = fleet.settled_bytes()
    data, t0 = write_new(m.src, name)
    dt = wait_all_identical([t / name for t in m.targets], data, t0, bound_s=BOUND_S, poll_s=POLL_S)
    after = fleet.settled_bytes(differ_from=before.peer_bytes_sent)
    if runs is None:
        return
    if dt is None:
        runs.timeouts += 1
        dt = BOUND_S
    runs.ms.append(dt * 1000)
    runs.copies.append((after.peer_bytes_sent - before.peer_bytes_sent) / FILE_BYTES)
    runs.copies_kernel.append(after.kernel_since(before) / FILE_BYTES)
    runs.copies_wchar.append((after.wchar - before.wchar) / FILE_BYTES)


# ------------------------------------------------------------------ lsyncd side


class Lsyncd:
    """lsyncd with N sync{default.rsync} blocks from one folder to N local folders; stopped by pid."""

    def __init__(self, base: Path, n: int, durability: str) -> None:
        self.base = base
        self.src = base / "src"
        self.targets = [base / f"t{k:02d}" for k in range(1, n + 1)]
        self.durability = durability
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.src.mkdir(parents=True)
        for t in self.targets:
            t.mkdir()
        extra = '_extra = { "--fsync" }, ' if self.durability == "safe" else ""
        blocks = "".join(
            f'sync {{ default.rsync, source = "{self.src}", target = "{t}/", delay = 0, '
            f"rsync = {{ archive = true, {extra}}} }}\n"
            for t in self.targets
        )
        log = self.base / "lsyncd.log"
        cfg = self.base / "lsyncd.lua"
        cfg.write_text(
            f'settings {{ nodaemon = true, insist = true, logfile = "{log}", '
            f'statusFile = "{self.base}/lsyncd.status" }}\n' + blocks
        )
        self.proc = subprocess.Popen(
            ["lsyncd", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        probe(self.src, self.targets, f"lsyncd N={len(self.targets)}")
        if self.proc.poll() is not None:
            raise BenchError(f"lsyncd exited: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_child(self.proc)


def measure_lsyncd(ls: Lsyncd, name: str, runs: Runs | None) -> None:
    data, t0 = write_new(ls.src, name)
    dt = wait_all_identical(
        [t / name for t in ls.targets], data, t0, bound_s=BOUND_S, poll_s=POLL_S
    )
    if runs is None:
        return
    if dt is None:
        runs.timeouts += 1
        dt = BOUND_S
    runs.ms.append(dt * 1000)


# ------------------------------------------------------------------ one N


def bench_n(
    fleet: Fleet, work: Path, n: int, repeats: int, results: dict[str, Any]
) -> dict[str, Runs]:
    maps = {mode: fleet.create(n, mode) for mode in ("tree", "star")}
    ls = Lsyncd(work / f"lsyncd-n{n}", n, fleet.durability)
    try:
        for mode, m in maps.items():
            routes = fleet.wait_plan(m)
            levels: dict[str, int] = {}
            for h in routes["hops"]:
                levels[h["level"]] = levels.get(h["level"], 0) + 1
            console.print(
                f"  N={n} {mode}: plan {len(routes['hops'])} hops "
                f"({', '.join(f'{v} {k}' for k, v in levels.items())}), "
                f"{sum(h['parent'] == 'src' for h in routes['hops'])} from src"
            )
            probe(m.src, m.targets, f"relaysync {mode} N={n}")
        ls.start()
        runs = {v: Runs() for v in VARIANTS}
        for i in range(-WARMUP, repeats):
            order = VARIANTS[i % 3 :] + VARIANTS[: i % 3]
            for variant in order:
                name = f"f{i + WARMUP:03d}.bin"
                keep = runs[variant] if i >= 0 else None
                if variant == "lsyncd":
                    measure_lsyncd(ls, name, keep)
                else:
                    measure_ours(fleet, maps[variant], name, keep)
        for mode, m in maps.items():
            direct, routes_seen = fleet.route_summary(m)
            results[f"fed_by_source_{'' if mode == 'tree' else 'star_'}n{n}"] = direct
            console.print(
                f"  N={n} {mode}: job log routes of the last change: {direct} target(s) fed by src; "
                + " ".join(sorted(set(routes_seen.values())))[:400]
            )
        return runs
    finally:
        ls.stop()
        # The mappings stay (idle: their links only ping) until the fleet stops. Deleting them
        # let the master hand the same id to the next N's mapping, and the agents' state kept
        # under that id (journal seq, watermarks) stalled it: see bench/README.md.


def record(results: dict[str, Any], n: int, runs: dict[str, Runs]) -> None:
    tree, star, ls = runs["tree"], runs["star"], runs["lsyncd"]
    results[f"regions_n{n}"] = regions_of(n)
    results[f"source_copies_n{n}"] = round(median(tree.copies), 3)
    results[f"source_copies_star_n{n}"] = round(median(star.copies), 3)
    results[f"source_copies_kernel_n{n}"] = round(median(tree.copies_kernel), 3)
    results[f"source_copies_kernel_star_n{n}"] = round(median(star.copies_kernel), 3)
    results[f"source_copies_wchar_n{n}"] = round(median(tree.copies_wchar), 3)
    results[f"source_copies_wchar_star_n{n}"] = round(median(star.copies_wchar), 3)
    results[f"time_ms_n{n}"] = round(median(tree.ms), 2)
    results[f"time_ms_star_n{n}"] = round(median(star.ms), 2)
    results[f"time_ms_lsyncd_n{n}"] = round(median(ls.ms), 2)
    results[f"time_ratio_vs_lsyncd_n{n}"] = round(median(tree.ms) / median(ls.ms), 3)
    results[f"time_ratio_star_vs_lsyncd_n{n}"] = round(median(star.ms) / median(ls.ms), 3)
    for key, r in (("", tree), ("star_", star), ("lsyncd_", ls)):
        results[f"time_ms_{key}runs_n{n}"] = [round(x, 1) for x in r.ms]
        if r.timeouts:
            results[f"timeouts_{key}n{n}"] = r.timeouts
    results[f"source_copies_runs_n{n}"] = [round(x, 3) for x in tree.copies]
    results[f"source_copies_star_runs_n{n}"] = [round(x, 3) for x in star.copies]


def print_table(results: dict[str, Any], ns: list[int]) -> None:
    table = Table(title=f"one {FILE_BYTES // 1024} KiB new file to N targets (medians)")
    for col in (
        "N",
        "regions",
        "src copies tree",
        "src copies star",
        "kernel tree / star",
        "tree ms",
        "star ms",
        "lsyncd ms",
        "tree/lsyncd",
        "star/lsyncd",
    ):
        table.add_column(col, justify="right")
    for n in ns:
        r = {k[: -len(f"_n{n}")]: v for k, v in results.items() if k.endswith(f"_n{n}")}.__getitem__
        table.add_row(
            str(n),
            str(r("regions")),
            f"{r('source_copies'):.2f}",
            f"{r('source_copies_star'):.2f}",
            f"{r('source_copies_kernel'):.2f} / {r('source_copies_kernel_star'):.2f}",
            f"{r('time_ms'):.1f}",
            f"{r('time_ms_star'):.1f}",
            f"{r('time_ms_lsyncd'):.1f}",
            f"{r('time_ratio_vs_lsyncd'):.2f}x",
            f"{r('time_ratio_star_vs_lsyncd'):.2f}x",
        )
    Console(width=140, highlight=False).print(table)  # wider than a pipe's default 80 columns


def evaluate(results: dict[str, Any], ns: list[int]) -> None:
    console.rule("goals")
    copies_ok = time_ok = True
    for n in ns:
        limit = regions_of(n) * (1 + COPIES_SLACK)
        copies_ok &= goal(
            f"N={n}: source sends at most one copy per region ({regions_of(n)})",
            results[f"source_copies_n{n}"] <= limit,
            f"{results[f'source_copies_n{n}']} copies (limit {limit:.2f}; star "
            f"{results[f'source_copies_star_n{n}']})",
        )
        time_ok &= goal(
            f"N={n}: time to all targets <= lsyncd's",
            results[f"time_ratio_vs_lsyncd_n{n}"] <= 1.0,
            f"{results[f'time_ms_n{n}']} / {results[f'time_ms_lsyncd_n{n}']} ms = "
            f"{results[f'time_ratio_vs_lsyncd_n{n}']}x",
        )
    results["goal_source_copies"] = copies_ok
    results["goal_time_vs_lsyncd"] = time_ok


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help=f"{REPEATS_QUICK} repeats instead of {REPEATS_FULL}"
    )
    ap.add_argument(
        "--ns", default=",".join(map(str, NS)), help=f"target counts (1..{MAX_TARGETS})"
    )
    ap.add_argument("--repeats", type=int, default=None, help="measured writes per variant and N")
    ap.add_argument(
        "--durability",
        choices=["safe", "fast"],
        default="safe",
        help="relaysync durability (safe pairs with rsync --fsync, fast with plain rsync)",
    )
    ap.add_argument(
        "--workdir", type=Path, default=None, help="parent for the temp dir (default /tmp)"
    )
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    if any(n < 1 or n > MAX_TARGETS for n in ns):
        ap.error(f"--ns values must be 1..{MAX_TARGETS}")
    repeats = args.repeats or (REPEATS_QUICK if args.quick else REPEATS_FULL)

    require_tools("lsyncd", "rsync")
    info = machine_info()
    print_machine(info)
    console.print(
        f"relaysync {src_revision()}; lsyncd: {tool_version('lsyncd')}; rsync: {tool_version('rsync')}"
    )
    console.print(
        f"per N: {WARMUP} warm-up + {repeats} measured new {FILE_BYTES // 1024} KiB files per variant "
        f"(tree, star, lsyncd in rotating order); durability {args.durability} vs rsync"
        f"{' --fsync' if args.durability == 'safe' else ''}; poll {POLL_S * 1000:g} ms, bound {BOUND_S:g} s"
    )

    work = Path(tempfile.mkdtemp(prefix="relaysync-bench-fanout-", dir=args.workdir))
    results: dict[str, Any] = {
        "bench": "fanout",
        "ns": ns,
        "repeats": repeats,
        "durability": args.durability,
        "file_bytes": FILE_BYTES,
        "bytes_method": "peer_bytes_sent",
        **{f"machine_{k}": v for k, v in info.items()},
    }
    rc = 0
    fleet = Fleet(work, args.durability)
    t_start = time.monotonic()
    try:
        console.rule("relaysync fleet")
        fleet.start()
        for n in ns:
            console.rule(f"N = {n}")
            record(results, n, bench_n(fleet, work, n, repeats, results))
            console.print(
                f"  tree {results[f'time_ms_n{n}']} ms, {results[f'source_copies_n{n}']} copies · "
                f"star {results[f'time_ms_star_n{n}']} ms, {results[f'source_copies_star_n{n}']} copies · "
                f"lsyncd {results[f'time_ms_lsyncd_n{n}']} ms"
            )
        print_table(results, ns)
        evaluate(results, ns)
    except Exception as exc:
        console.print(f"[red]benchmark failed: {type(exc).__name__}: {exc}[/red]")
        for name, agent in fleet.cluster.agents.items():
            console.print(f"--- agent {name} log tail ---\n{agent.process.log_tail(8)}")
        results["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1
    finally:
        fleet.cluster.stop()
        rmtree(work)
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    emit_json(results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
