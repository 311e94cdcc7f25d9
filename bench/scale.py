"""Scale benchmark: a tree of many small files (default 100,000 in 1,000 folders).

Measures (see bench/README.md):
  scan_s                    in-process rescan of the unchanged tree, hashes from the manifest
  rsync_dry_run_s           `rsync -a --dry-run SRC/ DST/` against an identical copy
  first_sync_s_safe/_fast   real processes (Cluster): mapping creation -> target tree equal
  rsync_fsync_s / rsync_s   `rsync -a --fsync` / `rsync -a` into a fresh empty dir
  catchup_bytes_one_change  TCP payload bytes between source and target agents for catching
                            up one changed 4 KiB file after kill -9 + restart of the target
  agent_rss_mib             peak RSS (VmHWM) of the source agent tracking the tree

Usage: python bench/scale.py [--files N] [--quick] [--workdir DIR] [--keep]
The last line printed is one JSON object of named results.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    ConnectionBytes,
    console,
    emit_json,
    goal,
    machine_info,
    make_tree,
    median,
    peak_rss_mib,
    poll_until,
    print_machine,
    require_tools,
    rmtree,
    rss_mib,
    timed_run,
    tool_version,
    tree_summary,
    trees_equal,
)

SCAN_RUNS = 3
GOAL_SCAN_RATIO = 1.5
GOAL_SYNC_RATIO = 1.0
GOAL_CATCHUP_BYTES = 64 * 1024
GOAL_RSS_MIB = 100.0


def bench_scan(src: Path, work: Path, runs: int) -> dict[str, Any]:
    from relaysync.watch.filters import PathFilter
    from relaysync.watch.manifest import Manifest
    from relaysync.watch.recorder import ChangeRecorder
    from relaysync.watch.scanner import scan_tree
    from relaysync.watch.watcher import FsEvent

    state = work / "scan-state"
    state.mkdir()
    manifest = Manifest(state / "manifest.db")
    try:
        flt = PathFilter()
        recorder = ChangeRecorder(src, manifest, flt)
        ta = time.perf_counter()
        changes = recorder.detect([FsEvent(kind="rescan", path="")]).changes
        tb = time.perf_counter()
        recorder.apply(changes)
        tc = time.perf_counter()
        console.print(
            f"  first full scan (stat+hash every file): detect {tb - ta:.3f} s, "
            f"apply to manifest {tc - tb:.3f} s, {len(changes)} changes, "
            f"manifest {manifest.count()} entries"
        )
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            out = scan_tree(src, manifest, flt)
            dt = time.perf_counter() - t0
            times.append(dt)
            if out:
                raise BenchError(
                    f"rescan of an unchanged tree reported {len(out)} changes (first: {out[0]})"
                )
            console.print(f"  rescan {i + 1}/{runs}: {dt:.3f} s (0 changes)")
    finally:
        manifest.close()

    copy = work / "dry-copy"
    timed_run(["rsync", "-a", f"{src}/", f"{copy}/"])
    rs = []
    for i in range(runs):
        dt = timed_run(["rsync", "-a", "--dry-run", f"{src}/", f"{copy}/"])
        rs.append(dt)
        console.print(f"  rsync -a --dry-run {i + 1}/{runs}: {dt:.3f} s")
    # copy and state stay until the work dir goes: deleting 100,000 files here would slow the
    # inode allocation of the first copies that follow (ext4 recently_deleted)
    return {"scan_s": median(times), "rsync_dry_run_s": median(rs), "first_scan_s": tc - ta}


def bench_rsync_copy(src: Path, work: Path, runs: int) -> dict[str, Any]:
    """Median of `runs` copies into a fresh empty dir each, the two variants in round-robin.

    No copy is deleted before the end of the benchmark (the work dir goes as a whole): ext4
    skips inodes freed in the last seconds to minutes when it allocates new ones, so a run
    right after deleting a 100,000-file tree would pay for it (see bench/README.md, bulk.py).
    """
    times: dict[str, list[float]] = {"rsync_fsync_s": [], "rsync_s": []}
    for i in range(runs):
        for key, flags in (("rsync_fsync_s", ["--fsync"]), ("rsync_s", [])):
            dst = work / f"rsync-{key}-{i}"
            dt = timed_run(["rsync", "-a", *flags, f"{src}/", f"{dst}/"])
            times[key].append(dt)
            console.print(
                f"  run {i + 1}/{runs} rsync -a {' '.join(flags):7} SRC/ DST/ (fresh empty DST): {dt:.3f} s"
            )
    out: dict[str, Any] = {k: median(v) for k, v in times.items()}
    out.update({f"{k}_runs": [round(x, 3) for x in v] for k, v in times.items()})
    return out


def wait_tree_equal(
    src_summary: tuple[int, int], dst: Path, last_dir: Path, last_dir_count: int, timeout_s: float
) -> float:
    """Poll until dst has the same file count and total size as the source; return the time of
    the poll that found it so (taken before that poll's look at the tree).

    Gate: a scandir of the last folder in name order (which the initial sync writes last) is
    polled every 20 ms; only when it is complete is the whole target summarised, so polling does
    not steal CPU from the two agents on a small machine. The summary (a stat of every file:
    40-100 ms for 10,000 on the benchmark host) is the observer's cost, not the copy's, as the
    check of rsync's copy after it exits is: it is not timed. A first copy commits its folders in
    order, so when the last one is complete the rest are; a summary that does not match yet
    leaves the time to a later poll.
    """
    polled_at = 0.0

    def last_dir_complete() -> bool:
        try:
            with os.scandir(last_dir) as it:
                n = sum(1 for de in it if not de.name.startswith(".relaysync."))
        except FileNotFoundError:
            return False
        return n >= last_dir_count

    def equal() -> bool:
        nonlocal polled_at
        polled_at = time.perf_counter()
        return last_dir_complete() and tree_summary(dst) == src_summary

    poll_until(equal, timeout_s=timeout_s, interval_s=0.02, what=f"{dst} to equal the source")
    return polled_at


def source_ready_at(
    log_path: Path, src: Path, after: float, *, marker: str = "ready"
) -> float | None:
    """Wall time of the source agent's 'source <root> <marker>' log line after `after` (diagnosis)."""
    import datetime as dt

    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if f"source {src} {marker}" not in line:
            continue
        try:
            t = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if t >= after - 1:
            return t
    return None


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--files", type=int, default=None, help="number of files (default 100,000; --quick 10,000)"
    )
    ap.add_argument("--quick", action="store_true", help="10,000 files unless --files is given")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="parent for the temp dir (default /tmp)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (for debugging)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="bound for each sync wait, s")
    args = ap.parse_args()
    files = args.files if args.files is not None else (10_000 if args.quick else 100_000)

    require_tools("rsync", "ss")
    info = machine_info()
    print_machine(info)
    console.print(f"rsync: {tool_version('rsync')}")
    console.print(
        "caches: warm page cache for every run (nothing dropped); same disk for source and targets"
    )

    work = Path(tempfile.mkdtemp(prefix="relaysync-bench-scale-", dir=args.workdir))
    results: dict[str, Any] = {
        "bench": "scale",
        "files": files,
        **{f"machine_{k}": v for k, v in info.items()},
    }
    cluster = None
    rc = 0
    try:
        src = work / "src"
        console.rule("source tree")
        t0 = time.perf_counter()
        n, ndirs, nbytes = make_tree(src, files)
        console.print(
            f"  {n} files (0-8 KiB, seeded), {nbytes / 1e6:.1f} MB in 10 top x 100 sub "
            f"folders ({ndirs} dirs), built in {time.perf_counter() - t0:.1f} s under {work}"
        )
        results.update(tree_layout="10 top x 100 sub folders", tree_bytes=nbytes)
        src_summary = tree_summary(src)
        last_dir = sorted(p for p in (src / sorted(os.listdir(src))[-1]).iterdir())[-1]
        last_rel = last_dir.relative_to(src)
        last_count = sum(1 for _ in os.scandir(last_dir))

        console.rule("scan: rescan of the unchanged tree vs rsync --dry-run")
        scan = bench_scan(src, work, SCAN_RUNS)
        results["scan_s"] = round(scan["scan_s"], 4)
        results["rsync_dry_run_s"] = round(scan["rsync_dry_run_s"], 4)
        results["first_scan_s"] = round(scan["first_scan_s"], 3)
        results["scan_ratio"] = round(scan["scan_s"] / scan["rsync_dry_run_s"], 3)
        console.print(
            f"  scan_s {results['scan_s']} (median of {SCAN_RUNS}) vs rsync_dry_run_s "
            f"{results['rsync_dry_run_s']}: ratio {results['scan_ratio']}"
        )

        console.rule("first full replication: rsync (local)")
        rs = bench_rsync_copy(src, work, 1 if args.quick else 3)
        results.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rs.items()})
        console.print(
            f"  median: rsync --fsync {results['rsync_fsync_s']} s, rsync {results['rsync_s']} s"
        )

        console.rule("first full replication: relaysync (master + agents src, t1 as processes)")
        from relaysync.testing.cluster import Cluster

        cluster = Cluster(work / "cluster")
        cluster.start_master()
        cluster.start_agent("src", wait=False)
        cluster.start_agent("t1", wait=False)
        cluster.wait_agent_up("src")
        cluster.wait_agent_up("t1")
        src_pid = cluster.agents["src"].process.pid
        console.print(
            f"  fleet up: master {cluster.api_url}, src pid {src_pid}, "
            f"t1 pid {cluster.agents['t1'].process.pid}; "
            f"src agent RSS before any mapping {rss_mib(src_pid):.1f} MiB"
        )

        mapping_ids: dict[str, int] = {}
        for durability in ("safe", "fast"):
            dst = work / f"t1-{durability}"
            t0 = time.perf_counter()
            wall0 = time.time()
            m = cluster.create_mapping(
                f"scale-{durability}", "src", src, [("t1", dst)], durability=durability
            )
            t_end = wait_tree_equal(src_summary, dst, dst / last_rel, last_count, args.timeout)
            dt = t_end - t0
            mapping_ids[durability] = int(m["id"])
            results[f"first_sync_s_{durability}"] = round(dt, 3)
            console.print(
                f"  durability={durability}: {dt:.3f} s from mapping creation to equal "
                f"count+size ({files / dt:,.0f} files/s)"
            )
            ready = source_ready_at(cluster.agents["src"].process.log_path, src, wall0)
            if ready is not None:
                results[f"source_ready_s_{durability}"] = round(ready - wall0, 3)
                console.print(
                    f"    source ready to stream (agent log 'source ... ready', after the first "
                    f"top-level entry is scanned and journaled): {ready - wall0:.3f} s"
                )
            scanned = source_ready_at(
                cluster.agents["src"].process.log_path, src, wall0, marker="scanned"
            )
            if scanned is not None:
                results[f"source_scanned_s_{durability}"] = round(scanned - wall0, 3)
                console.print(
                    f"    source initial scan+hash+journal complete (agent log 'source ... "
                    f"scanned', overlapped with streaming): {scanned - wall0:.3f} s"
                )
            ok, detail = trees_equal(src, dst)
            if not ok:
                raise BenchError(f"target {dst} differs from the source after sync: {detail}")
            console.print(f"    full content check (untimed): {detail}")
            if durability == "safe":
                # Leave only one mapping tracking the tree; the second mapping starts from scratch.
                r = cluster.api.delete(f"/api/mappings/{m['id']}")
                if r.status_code not in (200, 204):
                    raise BenchError(f"delete mapping: {r.status_code} {r.text}")
                # dst stays until the end: deleting it would slow the next variant's inode allocation
        results["first_sync_ratio_safe"] = round(
            results["first_sync_s_safe"] / results["rsync_fsync_s"], 3
        )
        results["first_sync_ratio_fast"] = round(
            results["first_sync_s_fast"] / results["rsync_s"], 3
        )

        console.rule("agent memory")
        hwm = peak_rss_mib(src_pid)
        now = rss_mib(src_pid)
        results["agent_rss_mib"] = round(hwm or -1, 1)
        results["agent_rss_now_mib"] = round(now or -1, 1)
        console.print(
            f"  source agent: peak RSS (VmHWM since start, includes both first syncs) "
            f"{hwm:.1f} MiB, current RSS while tracking {now:.1f} MiB"
        )

        console.rule("catch-up of one changed 4 KiB file after kill -9 of the target")
        dst = work / "t1-fast"
        mid = mapping_ids["fast"]
        victim_rel = sorted(os.listdir(src / last_rel))[0]
        victim = src / last_rel / victim_rel
        target_copy = dst / last_rel / victim_rel
        old_addr = cluster.api.get("/api/servers/t1").json()["address"]
        cluster.agents["t1"].process.kill()
        new_content = os.urandom(4096)
        with open(victim, "wb") as fh:
            fh.write(new_content)
        t0 = time.perf_counter()
        cluster.start_agent("t1", wait=False)

        def new_port() -> int | None:
            r = cluster.api.get("/api/servers/t1")
            if r.status_code != 200:
                return None
            body = r.json()
            if body.get("state") == "up" and body.get("address") and body["address"] != old_addr:
                return int(body["address"].rsplit(":", 1)[1])
            return None

        port = poll_until(
            new_port, timeout_s=60, interval_s=0.01, what="t1 back up at a new address"
        )
        counter = ConnectionBytes(port)
        stop = threading.Event()

        def sampler() -> None:
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    counter.sample()
                except Exception:  # noqa: BLE001 - a failed sample is retried 50 ms later
                    pass
                stop.wait(0.05)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()

        def caught_up() -> bool:
            try:
                with open(target_copy, "rb") as fh:
                    return fh.read() == new_content
            except FileNotFoundError:
                return False

        poll_until(caught_up, timeout_s=120, interval_s=0.005, what="the changed file on t1")
        t_equal = time.perf_counter() - t0

        def acked() -> bool:
            r = cluster.api.get(f"/api/mappings/{mid}/status")
            if r.status_code != 200:
                return False
            rows = r.json()
            rows = rows if isinstance(rows, list) else rows.get("targets", [])
            return bool(rows) and all(int(x.get("lag", 1)) == 0 for x in rows)

        try:
            poll_until(
                acked, timeout_s=30, interval_s=0.05, what="the target's ack reaching the master"
            )
        except BenchError as exc:
            console.print(f"  [yellow]note: {exc}; counting bytes so far[/yellow]")
        counter.sample()
        stop.set()
        th.join(5)
        ok, detail = trees_equal(src, dst)
        if not ok:
            raise BenchError(f"after catch-up the target differs: {detail}")
        results["catchup_bytes_one_change"] = counter.sent + counter.received
        results["catchup_bytes_to_target"] = counter.sent
        results["catchup_bytes_from_target"] = counter.received
        results["catchup_s"] = round(t_equal, 3)
        results["catchup_connections"] = len(counter.seen)
        results["catchup_method"] = (
            "ss -tin kernel counters (bytes_acked+bytes_received, TCP payload "
            "incl. TLS handshake and records) of the source agent's sockets "
            "to t1's new peer port, sampled every 50 ms until acked"
        )
        console.print(
            f"  t1 restarted at port {port}; changed file equal after {t_equal:.3f} s; "
            f"{len(counter.seen)} connection(s): {counter.sent} B to target + "
            f"{counter.received} B from target = {results['catchup_bytes_one_change']} B; "
            f"full check: {detail}"
        )
        console.print(f"  method: {results['catchup_method']}")

        hwm = peak_rss_mib(src_pid)
        results["agent_rss_mib"] = round(hwm or -1, 1)

        console.rule("goals")
        results["goal_scan"] = goal(
            "scan within 1.5x rsync dry run",
            results["scan_ratio"] <= GOAL_SCAN_RATIO,
            f"{results['scan_s']} s vs {results['rsync_dry_run_s']} s = {results['scan_ratio']}x",
        )
        results["goal_first_sync_safe"] = goal(
            "first sync (safe) <= 1.0x rsync --fsync",
            results["first_sync_ratio_safe"] <= GOAL_SYNC_RATIO,
            f"{results['first_sync_s_safe']} s vs {results['rsync_fsync_s']} s = {results['first_sync_ratio_safe']}x",
        )
        results["goal_first_sync_fast"] = goal(
            "first sync (fast) <= 1.0x rsync",
            results["first_sync_ratio_fast"] <= GOAL_SYNC_RATIO,
            f"{results['first_sync_s_fast']} s vs {results['rsync_s']} s = {results['first_sync_ratio_fast']}x",
        )
        results["goal_catchup"] = goal(
            "catch-up < 64 KiB",
            results["catchup_bytes_one_change"] < GOAL_CATCHUP_BYTES,
            f"{results['catchup_bytes_one_change']} B",
        )
        results["goal_agent_rss"] = goal(
            "agent < 100 MiB",
            results["agent_rss_mib"] < GOAL_RSS_MIB,
            f"{results['agent_rss_mib']} MiB peak",
        )
    except Exception as exc:
        console.print(f"[red]benchmark failed: {type(exc).__name__}: {exc}[/red]")
        if cluster is not None:
            for name, agent in cluster.agents.items():
                console.print(f"--- agent {name} log tail ---\n{agent.process.log_tail(20)}")
        results["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1
    finally:
        if cluster is not None:
            cluster.stop()
        if args.keep:
            console.print(f"kept {work}")
        else:
            rmtree(work)
    emit_json(results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
