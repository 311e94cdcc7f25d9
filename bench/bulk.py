"""Bulk benchmark: first copy of one 1 GiB file, and of 10,000 files of 4 KiB, against rsync.

  1 GiB   relaysync (master + agents `src`, `t1` as processes on 127.0.0.1; a live mapping with
          durability fast; the link is TLS, as every relaysync link is today) vs an rsync daemon
          (`rsync -a --stats FILE rsync://127.0.0.1:PORT/mod/NAME`, no TLS) and a local
          `rsync -a FILE DST/NAME`; neither side fsyncs. The file appears in the source folder as a
          hard link (complete at once); the clock runs from link(2) to the target copy complete
          (new inode of the full size; content checked afterwards, untimed). `os.sync()` before
          every timed run (untimed), so no run pays for the previous run's dirty pages.
  10k     10,000 files of 4,096 B in 100 folders: relaysync first sync (mapping creation -> the
          target has the same file count and total size; full content check afterwards) with
          durability safe vs local `rsync -a --fsync`, and fast vs local `rsync -a`, each into a
          fresh empty dir.

TLS on and off: src -> t1 uses the default (TLS); src -> t2 gets a pair policy `tls: false`
(PUT /api/policies). If the master refuses that policy, `time_ratio_1gib_tls_off` is null with a
note (never faked); the TLS-off link is confirmed on the wire by its overhead over the payload.

Usage: python bench/bulk.py [--runs N] [--quick] [--workdir DIR] [--keep]
The last line printed is one JSON object of named results.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    ConnectionWindow,
    RsyncDaemon,
    SshServer,
    console,
    emit_json,
    file_hash,
    goal,
    last_change_ns,
    machine_info,
    mapping_acked,
    median,
    peak_rss_mib,
    peer_port,
    poll_until,
    print_machine,
    require_tools,
    rmtree,
    rsync_wire_bytes,
    src_revision,
    timed_run,
    tool_version,
    tree_summary,
    trees_equal,
)
from scale import wait_tree_equal  # noqa: E402

GIB = 1024 * 1024 * 1024
GOAL_TLS_OFF = 1.0
GOAL_TLS_ON = 1.3
TLS_OFF_NOTE = "TLS-off links not implemented"


def make_big(path: Path, size: int, seed: int = 20261123) -> None:
    rng = random.Random(seed)
    step = 64 * 1024 * 1024
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            n = min(step, left)
            fh.write(rng.randbytes(n))
            left -= n


def make_small_tree(
    root: Path, files: int, size: int = 4096, dirs: int = 100, seed: int = 4096
) -> int:
    rng = random.Random(seed)
    pool = rng.randbytes(4 * 1024 * 1024)
    folders = [root / f"d{i:03d}" for i in range(dirs)]
    for d in folders:
        d.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        off = rng.randrange(0, len(pool) - size)
        with open(folders[i % dirs] / f"f{i:05d}.bin", "wb") as fh:
            fh.write(pool[off : off + size])
    return files * size


# ------------------------------------------------------------------ 1 GiB


def bench_big(work: Path, runs: int, results: dict[str, Any], timeout_s: float) -> None:
    from relaysync.testing.cluster import Cluster

    big = work / "big.bin"
    t0 = time.perf_counter()
    make_big(big, GIB)
    digest = file_hash(big)
    console.print(
        f"  1 GiB seeded random file written in {time.perf_counter() - t0:.1f} s (page cache warm)"
    )

    cluster = Cluster(work / "cluster-big")
    rsyncd = RsyncDaemon(work / "rsyncd", {"mod": work / "big-rsyncd"})
    sshd = SshServer(
        work / "sshd"
    )  # rsync -e ssh: an encrypted peer, for a like-for-like TLS figure
    ssh_dir = work / "big-ssh"
    ssh_dir.mkdir()
    local_dir = work / "big-local"
    local_dir.mkdir()
    times: dict[str, list[float]] = {
        "tls_on": [],
        "tls_off": [],
        "rsyncd": [],
        "ssh": [],
        "local": [],
    }
    wire: dict[str, list[int]] = {"tls_on": [], "tls_off": []}
    links: dict[
        str, tuple[Path, Path, int, int]
    ] = {}  # variant -> (src dir, target dir, port, mapping)
    try:
        cluster.start_master()
        for name in ("src", "t1", "t2"):
            cluster.start_agent(name, wait=False)
        for name in ("src", "t1", "t2"):
            cluster.wait_agent_up(name)
        rsyncd.start()
        sshd.start()
        # src -> t1 keeps the default (TLS); src -> t2 gets a pair policy with TLS off, set before
        # its mapping exists so that its first connection already follows it.
        r = cluster.api.put(
            "/api/policies", json={"scope": "pair", "source": "src", "target": "t2", "tls": False}
        )
        tls_off_ok = r.status_code in (200, 201)
        if not tls_off_ok:
            results["time_ratio_1gib_tls_off_note"] = (
                f"{TLS_OFF_NOTE} (PUT /api/policies: {r.status_code} {r.text[:200]})"
            )
            console.print(
                f"  [yellow]TLS-off policy refused: {r.status_code} {r.text[:200]}[/yellow]"
            )
        else:
            console.print(f"  pair policy src -> t2: {r.json()}")
        for variant, target in (("tls_on", "t1"), ("tls_off", "t2")):
            if variant == "tls_off" and not tls_off_ok:
                continue
            src_dir, tgt_dir = work / f"big-src-{variant}", work / f"big-{target}"
            src_dir.mkdir()
            m = cluster.create_mapping(
                f"bulk-1g-{variant}", "src", src_dir, [(target, tgt_dir)], durability="fast"
            )
            mid = int(m["id"])
            poll_until(
                lambda: tgt_dir.is_dir() and mapping_acked(cluster, mid),  # noqa: B023
                timeout_s=60,
                interval_s=0.05,
                what="the empty mapping to be live",
            )
            links[variant] = (src_dir, tgt_dir, peer_port(cluster, target), mid)
        console.print(
            f"  fleet up (master {cluster.api_url}; mappings fast: "
            + ", ".join(f"{v} -> peer port {x[2]}" for v, x in links.items())
            + f"); rsync daemon port {rsyncd.port}"
        )

        def ours(variant: str, i: int) -> float:
            src_dir, tgt_dir, port, mid = links[variant]
            name = f"big-{i}.bin"
            target = tgt_dir / name
            # the link keeps one connection open, so a sample every 0.5 s (each is an `ss` run,
            # CPU the agents would otherwise have) loses nothing; stop() samples once more
            window = ConnectionWindow(port, interval_s=0.5)
            window.start()
            os.link(big, src_dir / name)
            t0 = time.perf_counter()

            def done() -> bool:
                try:
                    return os.stat(target).st_size == GIB
                except FileNotFoundError:
                    return False

            poll_until(done, timeout_s=timeout_s, interval_s=0.01, what=f"{target} complete")
            dt = time.perf_counter() - t0
            poll_until(
                lambda: mapping_acked(cluster, mid), timeout_s=60, interval_s=0.05, what="ack"
            )
            sent, received, _ = window.stop()
            wire[variant].append(sent + received)
            if file_hash(target) != digest:
                raise BenchError(f"{target} differs from the source")
            (src_dir / name).unlink()  # the delete replicates; wait so runs do not overlap
            poll_until(
                lambda: not target.exists(), timeout_s=60, interval_s=0.02, what="delete on t1"
            )
            console.print(
                f"    relaysync {variant.replace('_', ' ')}: {dt:.3f} s ({GIB / dt / 1e6:.0f} MB/s), "
                f"{sent + received:,} B on the wire ({sent + received - GIB:+,} B over the payload; "
                f"{window.retransmitted:,} B retransmitted, not counted)"
            )
            return dt

        def via_daemon(i: int) -> float:
            name = f"big-{i}.bin"
            cmd = ["rsync", "-a", "--stats", str(big), rsyncd.url("mod") + name]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            dt = time.perf_counter() - t0
            if out.returncode != 0:
                raise BenchError(f"{' '.join(cmd)}: {out.stderr.strip()[-500:]}")
            sent, received = rsync_wire_bytes(out.stdout)
            dst = work / "big-rsyncd" / name
            if file_hash(dst) != digest:
                raise BenchError(f"{dst} differs from the source")
            dst.unlink()
            console.print(
                f"    rsync daemon (no TLS): {dt:.3f} s ({GIB / dt / 1e6:.0f} MB/s), "
                f"{sent + received:,} B on the wire"
            )
            return dt

        def local(i: int) -> float:
            dst = local_dir / f"big-{i}.bin"
            dt = timed_run(["rsync", "-a", str(big), str(dst)], timeout_s=timeout_s)
            if file_hash(dst) != digest:
                raise BenchError(f"{dst} differs from the source")
            dst.unlink()
            console.print(
                f"    rsync local{' (warm-up, not counted)' if i < 0 else ''}: {dt:.3f} s "
                f"({GIB / dt / 1e6:.0f} MB/s)"
            )
            return dt

        variants: dict[str, Any] = {v: (lambda i, v=v: ours(v, i)) for v in links}

        def via_ssh(i: int) -> float:
            dst = ssh_dir / f"big-{i}.bin"
            cmd = [
                "rsync",
                "-a",
                "--stats",
                "-e",
                sshd.rsync_shell(),
                str(big),
                f"root@127.0.0.1:{dst}",
            ]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            dt = time.perf_counter() - t0
            if out.returncode != 0:
                raise BenchError(f"rsync over ssh: {out.stderr.strip()[-500:]}")
            if file_hash(dst) != digest:
                raise BenchError(f"{dst} differs from the source")
            dst.unlink()
            console.print(
                f"    rsync over ssh ({SshServer.CIPHER}): {dt:.3f} s ({GIB / dt / 1e6:.0f} MB/s)"
            )
            return dt

        variants.update(rsyncd=via_daemon, ssh=via_ssh, local=local)
        order = list(variants)
        # Unmeasured warm-up: the first 1 GiB written on this VM page-faults fresh guest memory
        # (about 3 us per 4 KiB page, reference/perf.md; measured 2.6 s of extra kernel time in
        # the receiving agent); without it, whichever variant goes first pays for it.
        local(-1)
        for i in range(runs):
            console.print(f"  run {i + 1}/{runs}")
            k = i % len(order)
            for key in order[k:] + order[:k]:  # rotate who goes first
                os.sync()
                times[key].append(variants[key](i))
        src_hwm = peak_rss_mib(cluster.agents["src"].process.pid)
        t1_hwm = peak_rss_mib(cluster.agents["t1"].process.pid)
    except Exception:
        for name, agent in cluster.agents.items():
            console.print(f"--- agent {name} log tail ---\n{agent.process.log_tail(20)}")
        raise
    finally:
        cluster.stop()
        rsyncd.stop()
        sshd.stop()
    big.unlink()
    o, d, loc = (median(times[k]) for k in ("tls_on", "rsyncd", "local"))
    results.update(
        {
            "ours_1gib_s_tls_on": round(o, 3),
            "rsync_daemon_1gib_s": round(d, 3),
            "rsync_local_1gib_s": round(loc, 3),
            "ours_1gib_s_tls_on_runs": [round(x, 3) for x in times["tls_on"]],
            "rsync_daemon_1gib_s_runs": [round(x, 3) for x in times["rsyncd"]],
            "rsync_local_1gib_s_runs": [round(x, 3) for x in times["local"]],
            "ours_1gib_wire_bytes_tls_on": int(median(wire["tls_on"])),
            "time_ratio_1gib_tls_on": round(o / d, 3),
            "time_ratio_1gib_tls_on_vs_local": round(o / loc, 3),
            "rsync_ssh_1gib_s": round(median(times["ssh"]), 3),
            "rsync_ssh_1gib_s_runs": [round(x, 3) for x in times["ssh"]],
            # both encrypted with AES-256-GCM: the like-for-like figure for TLS on (the goal stays vs the daemon)
            "time_ratio_1gib_tls_on_vs_ssh": round(o / median(times["ssh"]), 3),
            "agent_src_peak_rss_mib_1gib": round(src_hwm or -1, 1),
            "agent_t1_peak_rss_mib_1gib": round(t1_hwm or -1, 1),
        }
    )
    if times["tls_off"]:
        off = median(times["tls_off"])
        off_wire = int(median(wire["tls_off"]))
        on_over, off_over = results["ours_1gib_wire_bytes_tls_on"] - GIB, off_wire - GIB
        results.update(
            {
                "ours_1gib_s_tls_off": round(off, 3),
                "ours_1gib_s_tls_off_runs": [round(x, 3) for x in times["tls_off"]],
                "ours_1gib_wire_bytes_tls_off": off_wire,
                "time_ratio_1gib_tls_off": round(off / d, 3),
                "time_ratio_1gib_tls_off_vs_local": round(off / loc, 3),
                # TLS adds 17-29 B per record of <= 16 KiB: about 1.1-1.9 MB over 1 GiB, which the plain
                # link must not carry; framing is 4 B per message on both.
                "tls_off_seen_on_wire": on_over - off_over > 512 * 1024,
                "wire_overhead_bytes_tls_on": on_over,
                "wire_overhead_bytes_tls_off": off_over,
            }
        )
        console.print(
            f"  wire overhead over the 1 GiB payload: TLS on {on_over:+,} B, TLS off {off_over:+,} B "
            f"({'plain link confirmed' if results['tls_off_seen_on_wire'] else 'NOT clearly plain'})"
        )
    else:
        results["time_ratio_1gib_tls_off"] = None
        results.setdefault("time_ratio_1gib_tls_off_note", TLS_OFF_NOTE)
    console.print(
        f"  medians: relaysync TLS on {o:.3f} s"
        + (f", TLS off {results['ours_1gib_s_tls_off']} s" if times["tls_off"] else "")
        + f"; rsync daemon {d:.3f} s, rsync over ssh {results['rsync_ssh_1gib_s']} s, rsync local "
        f"{loc:.3f} s; TLS-on ratio vs daemon {o / d:.2f}x, vs ssh {results['time_ratio_1gib_tls_on_vs_ssh']}x, "
        f"vs local {o / loc:.2f}x; peak RSS src {src_hwm:.0f} MiB, t1 {t1_hwm:.0f} MiB"
    )


# ------------------------------------------------------------------ 10k x 4 KiB


def bench_small(
    work: Path, runs: int, files: int, results: dict[str, Any], timeout_s: float
) -> None:
    from relaysync.testing.cluster import Cluster

    src = work / "small-src"
    t0 = time.perf_counter()
    nbytes = make_small_tree(src, files)
    console.print(
        f"  {files:,} files of 4,096 B in 100 folders ({nbytes / 1e6:.1f} MB), built in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    summary = tree_summary(src)
    last_dir = sorted(src.iterdir())[-1]
    last_rel = last_dir.relative_to(src)
    last_count = sum(1 for _ in os.scandir(last_dir))

    # Runs are interleaved (rsync --fsync, ours safe, rsync, ours fast, per round) and no
    # destination is deleted before the end: ext4 skips inodes freed in the last seconds to
    # minutes when it allocates new ones (`recently_deleted`, seen with perf at 30 % of the
    # receiver's CPU), so whoever runs right after a deletion of 10,000 files pays for it.
    rs: dict[str, list[float]] = {"fsync": [], "plain": []}
    ours: dict[str, list[float]] = {"safe": [], "fast": []}
    # the same runs timed to the destination's last inode change (last_change_ns)
    rs_tree: dict[str, list[float]] = {"fsync": [], "plain": []}
    ours_tree: dict[str, list[float]] = {"safe": [], "fast": []}
    done_dirs: list[Path] = []

    def rsync_run(i: int, key: str) -> None:
        flags = ["--fsync"] if key == "fsync" else []
        dst = work / f"small-rsync-{key}-{i}"
        os.sync()
        t0_ns = time.time_ns()
        dt = timed_run(["rsync", "-a", *flags, f"{src}/", f"{dst}/"], timeout_s=timeout_s)
        rs[key].append(dt)
        rs_tree[key].append((last_change_ns(dst) - t0_ns) / 1e9)
        done_dirs.append(dst)
        console.print(
            f"    run {i + 1}/{runs} rsync -a {' '.join(flags):7} (local, fresh dir): {dt:.3f} s "
            f"(last change at {rs_tree[key][-1]:.3f} s)"
        )

    def ours_run(i: int, durability: str) -> None:
        dst = work / f"small-t1-{durability}-{i}"
        os.sync()
        t0_ns = time.time_ns()
        t0 = time.perf_counter()
        m = cluster.create_mapping(
            f"bulk-10k-{durability}-{i}", "src", src, [("t1", dst)], durability=durability
        )
        t_end = wait_tree_equal(summary, dst, dst / last_rel, last_count, timeout_s)
        dt = t_end - t0
        ours[durability].append(dt)
        ours_tree[durability].append((last_change_ns(dst) - t0_ns) / 1e9)
        ok, detail = trees_equal(src, dst)
        if not ok:
            raise BenchError(f"target {dst} differs from the source: {detail}")
        console.print(
            f"    run {i + 1}/{runs} relaysync {durability}: {dt:.3f} s "
            f"(last change at {ours_tree[durability][-1]:.3f} s) "
            f"({files / dt:,.0f} files/s); full check: {detail}"
        )
        r = cluster.api.delete(f"/api/mappings/{m['id']}")
        if r.status_code not in (200, 204):
            raise BenchError(f"delete mapping: {r.status_code} {r.text}")
        done_dirs.append(dst)

    cluster = Cluster(work / "cluster-small")
    try:
        cluster.start_master()
        cluster.start_agent("src", wait=False)
        cluster.start_agent("t1", wait=False)
        cluster.wait_agent_up("src")
        cluster.wait_agent_up("t1")
        for i in range(runs):
            rsync_run(i, "fsync")
            ours_run(i, "safe")
            rsync_run(i, "plain")
            ours_run(i, "fast")
    except Exception:
        for name, agent in cluster.agents.items():
            console.print(f"--- agent {name} log tail ---\n{agent.process.log_tail(20)}")
        raise
    finally:
        cluster.stop()
        for d in done_dirs:
            rmtree(d)
    results.update(
        {
            "files_10k": files,
            "ours_10k_s_safe": round(median(ours["safe"]), 3),
            "ours_10k_s_fast": round(median(ours["fast"]), 3),
            "rsync_fsync_10k_s": round(median(rs["fsync"]), 3),
            "rsync_10k_s": round(median(rs["plain"]), 3),
            "ours_10k_s_safe_runs": [round(x, 3) for x in ours["safe"]],
            "ours_10k_s_fast_runs": [round(x, 3) for x in ours["fast"]],
            "rsync_fsync_10k_s_runs": [round(x, 3) for x in rs["fsync"]],
            "rsync_10k_s_runs": [round(x, 3) for x in rs["plain"]],
        }
    )
    for key, runs_s in (
        ("ours_10k_tree_s_safe", ours_tree["safe"]),
        ("ours_10k_tree_s_fast", ours_tree["fast"]),
        ("rsync_fsync_10k_tree_s", rs_tree["fsync"]),
        ("rsync_10k_tree_s", rs_tree["plain"]),
    ):
        results[key] = round(median(runs_s), 3)
    results["time_ratio_10k_files_safe_tree"] = round(
        results["ours_10k_tree_s_safe"] / results["rsync_fsync_10k_tree_s"], 3
    )
    results["time_ratio_10k_files_fast_tree"] = round(
        results["ours_10k_tree_s_fast"] / results["rsync_10k_tree_s"], 3
    )
    results["time_ratio_10k_files_safe"] = round(
        results["ours_10k_s_safe"] / results["rsync_fsync_10k_s"], 3
    )
    results["time_ratio_10k_files_fast"] = round(
        results["ours_10k_s_fast"] / results["rsync_10k_s"], 3
    )
    console.print(
        f"  medians: safe {results['ours_10k_s_safe']} s vs rsync --fsync {results['rsync_fsync_10k_s']} s "
        f"= {results['time_ratio_10k_files_safe']}x; fast {results['ours_10k_s_fast']} s vs rsync "
        f"{results['rsync_10k_s']} s = {results['time_ratio_10k_files_fast']}x"
    )
    console.print(
        f"  timed to the last change in the destination: safe "
        f"{results['time_ratio_10k_files_safe_tree']}x, fast "
        f"{results['time_ratio_10k_files_fast_tree']}x"
    )


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per variant (median reported)")
    ap.add_argument("--quick", action="store_true", help="one run per variant")
    ap.add_argument("--files", type=int, default=10_000, help="small files (default 10,000)")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="parent for the temp dir (default /tmp)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (for debugging)")
    ap.add_argument("--timeout", type=float, default=900.0, help="bound for each wait, s")
    ap.add_argument(
        "--only",
        choices=("1gib", "10k"),
        default=None,
        help="run one case alone (the other's goals are then reported as not measured)",
    )
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs

    require_tools("rsync", "ss", "ssh", "ssh-keygen", "sshd")
    info = machine_info()
    print_machine(info)
    rev = src_revision()
    console.print(f"rsync: {tool_version('rsync')}; relaysync checkout {rev}")
    console.print(
        "caches: warm page cache (files just written); os.sync() before each timed run; "
        "source and targets on the same filesystem"
    )

    work = Path(tempfile.mkdtemp(prefix="relaysync-bench-bulk-", dir=args.workdir))
    results: dict[str, Any] = {
        "bench": "bulk",
        "runs": runs,
        **{f"machine_{k}": v for k, v in info.items()},
        "src_revision": rev,
        "pairs": "1 GiB: relaysync fast (TLS on / off) vs rsync daemon and local rsync, no fsync; "
        "10k: safe vs local rsync --fsync, fast vs local rsync",
    }
    rc = 0
    try:
        if args.only != "10k":
            console.rule("first copy of one 1 GiB file (relaysync: TLS on)")
            bench_big(work, runs, results, args.timeout)
        if args.only != "1gib":
            console.rule(f"first copy of {args.files:,} files of 4 KiB")
            bench_small(work, runs, args.files, results, args.timeout)
    except Exception as exc:
        console.print(f"[red]benchmark failed: {type(exc).__name__}: {exc}[/red]")
        results["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1

    console.rule("goals")
    if results.get("time_ratio_1gib_tls_off") is not None:
        r = results["time_ratio_1gib_tls_off"]
        results["goal_1gib_tls_off"] = goal(
            f"1 GiB first copy, TLS off <= {GOAL_TLS_OFF}x rsync daemon",
            r <= GOAL_TLS_OFF,
            f"{results['ours_1gib_s_tls_off']} s vs {results['rsync_daemon_1gib_s']} s = {r}x",
        )
    elif args.only != "10k":  # run, but not measured: the note says why
        goal(
            f"1 GiB first copy, TLS off <= {GOAL_TLS_OFF}x rsync",
            False,
            f"not measured: {results.get('time_ratio_1gib_tls_off_note', TLS_OFF_NOTE)}",
        )
        results["goal_1gib_tls_off"] = None
    if "time_ratio_1gib_tls_on" in results:
        r = results["time_ratio_1gib_tls_on"]
        results["goal_1gib_tls_on"] = goal(
            f"1 GiB first copy, TLS on <= {GOAL_TLS_ON}x rsync daemon",
            r <= GOAL_TLS_ON,
            f"{results['ours_1gib_s_tls_on']} s vs {results['rsync_daemon_1gib_s']} s = {r}x",
        )
    for d, peer in (("safe", "rsync --fsync"), ("fast", "rsync")):
        key = f"time_ratio_10k_files_{d}"
        if key in results:
            r = results[key]
            results[f"goal_10k_files_{d}"] = goal(
                f"10k files first copy ({d}, TLS on) <= {GOAL_TLS_ON}x {peer}",
                r <= GOAL_TLS_ON,
                f"{results[f'ours_10k_s_{d}']} s vs "
                f"{results['rsync_fsync_10k_s' if d == 'safe' else 'rsync_10k_s']} s = {r}x",
            )
    results["machine_loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.keep:
        console.print(f"kept {work}")
    else:
        rmtree(work)
    emit_json(results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
