"""Latency benchmark: close() on the source -> identical bytes on all N targets.

For N = 1, 2, 8 targets and 1 KiB / 1 MiB files, files are written one at a time with fresh
random content (new file names); after close() returns, every target copy is polled (size, then
content; 0.5 ms interval, bounded 10 s) and the latency is the moment the LAST target matched
minus the moment right after close().

relaysync: one Cluster (master, "src", t1..t8 as processes on 127.0.0.1); one mapping per
(N, durability) with its own source folder, deleted after its run.
lsyncd: Debian's lsyncd (delay = 0, one sync{default.rsync} block per target) pushing to a local
rsync daemon (one module per target dir). The durability pairs follow docs/DESIGN: relaysync
"safe" (the default, batched fsync) against lsyncd with rsync `--fsync`; relaysync "fast" (no
fsync) against lsyncd with plain rsync.

Usage: python bench/latency.py [--quick] [--ns 1,2,8] [--durability safe,fast] [--workdir DIR]
The last line printed is one JSON object of named results.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    console,
    emit_json,
    goal,
    machine_info,
    percentile,
    poll_until,
    print_machine,
    require_tools,
    rmtree,
    tool_version,
    wait_all_identical,
)

SIZES = {"1k": 1024, "1m": 1024 * 1024}
COUNTS = {"1k": 200, "1m": 50}
WARMUP = 3
POLL_S = 0.0005
BOUND_S = 10.0
MAX_TARGETS = 8
GOAL_P99_MS = 100.0
GOAL_RATIO = 0.5


# ------------------------------------------------------------------ the measurement


def wait_identical(paths: list[Path], data: bytes, t_closed: float) -> float | None:
    """Poll every target copy until identical; return seconds since close(), or None at the bound."""
    return wait_all_identical(paths, data, t_closed, bound_s=BOUND_S, poll_s=POLL_S)


def run_workload(
    src: Path,
    targets: list[Path],
    label: str,
    counts: dict[str, int],
    results: dict[str, Any],
    prefix: str,
) -> None:
    for size_key, size in SIZES.items():
        n = counts[size_key]
        lat: list[float] = []
        timeouts = 0
        for i in range(-WARMUP, n):
            name = f"{size_key}-{i + WARMUP:05d}.bin"
            data = os.urandom(size)
            with open(src / name, "wb") as fh:
                fh.write(data)
            t_closed = time.perf_counter()
            dt = wait_identical([t / name for t in targets], data, t_closed)
            if i < 0:
                continue
            if dt is None:
                timeouts += 1
                dt = BOUND_S
            lat.append(dt * 1000)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        key = f"n{len(targets)}_{size_key}"
        results[f"{prefix}p50_ms_{key}"] = round(p50, 2)
        results[f"{prefix}p99_ms_{key}"] = round(p99, 2)
        results[f"{prefix}max_ms_{key}"] = round(max(lat), 2)
        if timeouts:
            results[f"{prefix}timeouts_{key}"] = timeouts
        console.print(
            f"  {label:28} N={len(targets)} {size_key}: {n} writes  p50 {p50:8.2f} ms  "
            f"p99 {p99:8.2f} ms  max {max(lat):8.2f} ms"
            + (f"  [red]{timeouts} timed out at {BOUND_S} s[/red]" if timeouts else "")
        )


def wait_probe(src: Path, targets: list[Path], timeout_s: float, what: str) -> None:
    """Write a probe file and wait until every target has it: the replication path is live."""
    data = os.urandom(64)
    for _ in range(3):
        with open(src / "probe.bin", "wb") as fh:
            fh.write(data)
        t0 = time.perf_counter()
        if wait_identical([t / "probe.bin" for t in targets], data, t0) is not None:
            return
        if time.perf_counter() - t0 > timeout_s:
            break
    raise BenchError(f"{what}: probe file never reached all targets")


# ------------------------------------------------------------------ relaysync


def bench_ours(
    work: Path,
    ns: list[int],
    durabilities: list[str],
    counts: dict[str, int],
    results: dict[str, Any],
) -> None:
    from relaysync.testing.cluster import Cluster

    cluster = Cluster(work / "cluster")
    try:
        cluster.start_master()
        names = ["src"] + [f"t{i}" for i in range(1, MAX_TARGETS + 1)]
        for name in names:
            cluster.start_agent(name, wait=False)
        for name in names:
            cluster.wait_agent_up(name)
        console.print(f"  fleet up: master {cluster.api_url}, agents {', '.join(names)}")
        for durability in durabilities:
            prefix = "" if durability == "safe" else "fast_"
            for n in ns:
                base = work / f"ours-{durability}-n{n}"
                src = base / "src"
                src.mkdir(parents=True)
                targets = [base / f"t{i}" for i in range(1, n + 1)]
                m = cluster.create_mapping(
                    f"lat-{durability}-n{n}",
                    "src",
                    src,
                    [(f"t{i}", targets[i - 1]) for i in range(1, n + 1)],
                    durability=durability,
                )
                wait_probe(src, targets, 60, f"relaysync mapping {m['name']}")
                run_workload(src, targets, f"relaysync {durability}", counts, results, prefix)
                r = cluster.api.delete(f"/api/mappings/{m['id']}")
                if r.status_code not in (200, 204):
                    raise BenchError(f"delete mapping: {r.status_code} {r.text}")
                # The folders are left in place until the fleet is stopped: removing a source
                # folder while its just-deleted mapping is still being torn down makes the source
                # journal the deletion and a target agent crash (see bench/README.md).
    except Exception:
        for name, agent in cluster.agents.items():
            console.print(f"--- agent {name} log tail ---\n{agent.process.log_tail(15)}")
        raise
    finally:
        cluster.stop()


# ------------------------------------------------------------------ lsyncd + rsync daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_pid(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout_s)


def bench_lsyncd(
    work: Path,
    ns: list[int],
    durabilities: list[str],
    counts: dict[str, int],
    results: dict[str, Any],
) -> None:
    base = work / "lsyncd"
    base.mkdir()
    port = free_port()
    modules = []
    for durability in durabilities:
        for n in ns:
            for i in range(1, n + 1):
                d = base / f"{durability}-n{n}" / f"t{i}"
                d.mkdir(parents=True)
                modules.append(f"[{durability}n{n}t{i}]\n    path = {d}\n")
    conf = base / "rsyncd.conf"
    conf.write_text(
        "use chroot = no\nread only = false\nuid = root\ngid = root\n"
        f"pid file = {base / 'rsyncd.pid'}\nlog file = {base / 'rsyncd.log'}\n\n"
        + "\n".join(modules)
    )
    daemon = subprocess.Popen(
        ["rsync", "--daemon", "--no-detach", "--port", str(port), "--config", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def listening() -> bool:
            if daemon.poll() is not None:
                raise BenchError(f"rsync daemon exited with {daemon.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False

        poll_until(listening, timeout_s=15, interval_s=0.02, what="rsync daemon listening")
        console.print(
            f"  rsync daemon pid {daemon.pid} on 127.0.0.1:{port}, {len(modules)} modules"
        )
        for durability in durabilities:
            prefix = "lsyncd_" if durability == "safe" else "lsyncd_plain_"
            extra = '_extra = { "--fsync" }, ' if durability == "safe" else ""
            for n in ns:
                src = base / f"{durability}-n{n}" / "src"
                src.mkdir()
                targets = [base / f"{durability}-n{n}" / f"t{i}" for i in range(1, n + 1)]
                blocks = "".join(
                    f'sync {{ default.rsync, source = "{src}", '
                    f'target = "rsync://127.0.0.1:{port}/{durability}n{n}t{i}/", delay = 0, '
                    f"rsync = {{ archive = true, {extra}}} }}\n"
                    for i in range(1, n + 1)
                )
                cfg = base / f"lsyncd-{durability}-n{n}.lua"
                log = base / f"lsyncd-{durability}-n{n}.log"
                cfg.write_text(
                    f'settings {{ nodaemon = true, insist = true, logfile = "{log}", '
                    f'statusFile = "{base}/lsyncd-{durability}-n{n}.status" }}\n' + blocks
                )
                proc = subprocess.Popen(
                    ["lsyncd", str(cfg)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                try:
                    wait_probe(src, targets, 60, f"lsyncd {durability} N={n}")
                    if proc.poll() is not None:
                        raise BenchError(f"lsyncd exited: {log.read_text()[-2000:]}")
                    label = "lsyncd+rsync --fsync" if durability == "safe" else "lsyncd+rsync"
                    run_workload(src, targets, label, counts, results, prefix)
                finally:
                    stop_pid(proc)
    finally:
        stop_pid(daemon)
        rmtree(base)


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="divide the write counts by 4")
    ap.add_argument("--ns", default="1,2,8", help="target counts (max 8)")
    ap.add_argument("--durability", default="safe,fast", help="relaysync durabilities to measure")
    ap.add_argument(
        "--only",
        choices=["ours", "lsyncd"],
        default=None,
        help="debugging: run one side only (no comparison, so no goals)",
    )
    ap.add_argument("--count-divisor", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="parent for the temp dir (default /tmp)"
    )
    args = ap.parse_args()
    ns = [int(x) for x in args.ns.split(",")]
    durabilities = [d for d in args.durability.split(",") if d]
    if any(n < 1 or n > MAX_TARGETS for n in ns) or not set(durabilities) <= {"safe", "fast"}:
        ap.error("--ns values must be 1..8; --durability from safe,fast")
    div = args.count_divisor or (4 if args.quick else 1)
    counts = {k: max(4, v // div) for k, v in COUNTS.items()}

    require_tools("lsyncd", "rsync")
    info = machine_info()
    print_machine(info)
    console.print(f"lsyncd: {tool_version('lsyncd')}; rsync: {tool_version('rsync')}")
    console.print(
        f"workload per N: {counts['1k']} x 1 KiB and {counts['1m']} x 1 MiB new files, one at a time, "
        f"{WARMUP} warm-up writes each; poll {POLL_S * 1000} ms, bound {BOUND_S} s"
    )

    work = Path(tempfile.mkdtemp(prefix="relaysync-bench-latency-", dir=args.workdir))
    results: dict[str, Any] = {
        "bench": "latency",
        "counts": counts,
        "ns": ns,
        **{f"machine_{k}": v for k, v in info.items()},
    }
    rc = 0
    try:
        if args.only != "lsyncd":
            console.rule("relaysync")
            bench_ours(work, ns, durabilities, counts, results)
        if args.only != "ours":
            console.rule("lsyncd (delay = 0) -> rsync daemon")
            bench_lsyncd(work, ns, durabilities, counts, results)
        if args.only:
            raise BenchError(f"--only {args.only}: no comparison made, goals not evaluated")

        console.rule("goals")
        top = max(ns)
        key = f"n{top}_1k"
        if "safe" in durabilities:
            results["p50_ms"] = results[f"p50_ms_{key}"]
            results["p99_ms"] = results[f"p99_ms_{key}"]
            results["lsyncd_p99_ms"] = results[f"lsyncd_p99_ms_{key}"]
            results["p99_ratio_vs_lsyncd"] = round(results["p99_ms"] / results["lsyncd_p99_ms"], 3)
            results["goal_p99"] = goal(
                f"p99 < {GOAL_P99_MS:.0f} ms to {top} targets (safe, 1 KiB)",
                results["p99_ms"] < GOAL_P99_MS,
                f"{results['p99_ms']} ms",
            )
            results["goal_vs_lsyncd"] = goal(
                "p99 <= 0.5x lsyncd (safe vs rsync --fsync)",
                results["p99_ratio_vs_lsyncd"] <= GOAL_RATIO,
                f"{results['p99_ms']} / {results['lsyncd_p99_ms']} ms = {results['p99_ratio_vs_lsyncd']}x",
            )
        if "fast" in durabilities:
            results["fast_p99_ms"] = results[f"fast_p99_ms_{key}"]
            results["lsyncd_plain_p99_ms"] = results[f"lsyncd_plain_p99_ms_{key}"]
            results["p99_ratio_vs_lsyncd_fast"] = round(
                results["fast_p99_ms"] / results["lsyncd_plain_p99_ms"], 3
            )
            results["goal_p99_fast"] = goal(
                f"p99 < {GOAL_P99_MS:.0f} ms to {top} targets (fast, 1 KiB)",
                results["fast_p99_ms"] < GOAL_P99_MS,
                f"{results['fast_p99_ms']} ms",
            )
            results["goal_vs_lsyncd_fast"] = goal(
                "p99 <= 0.5x lsyncd (fast vs plain rsync)",
                results["p99_ratio_vs_lsyncd_fast"] <= GOAL_RATIO,
                f"{results['fast_p99_ms']} / {results['lsyncd_plain_p99_ms']} ms = {results['p99_ratio_vs_lsyncd_fast']}x",
            )
    except Exception as exc:
        console.print(f"[red]benchmark failed: {type(exc).__name__}: {exc}[/red]")
        results["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1
    finally:
        rmtree(work)
    emit_json(results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
