"""Delta benchmark: an update of a 100 MiB file that a target holds in its previous version.

Cases (seeded; see bench/README.md):
  scattered  100 random 10 KiB edits spread over a 100 MiB random file (same size)
  insert     1 MiB of new random bytes inserted in the middle
  append     10 % (10 MiB) appended
  text       a ~100 MiB text file of generated lines, 1 % of its lines replaced by new lines

For each case: relaysync (master + agents `src` and `t1` as processes, a mapping with durability
fast) and an rsync daemon (`rsync -a --no-whole-file --stats FILE rsync://HOST:PORT/mod/`, the
module already holding the old version; neither fsyncs), first on loopback, then over a
100 Mbit/s link (two network namespaces joined by a veth pair, `tc qdisc ... tbf` on both ends).
Measured: bytes on the wire (relaysync: kernel per-socket counters of the source agent's
connections to t1's peer port, via `ss -tin`; rsync: `--stats` bytes sent + received) and wall
time (relaysync: close() of the overwritten source file -> target file identical; rsync: the
client's run time).

Usage: python bench/delta.py [--runs N] [--quick] [--no-limited] [--workdir DIR] [--keep]
The last line printed is one JSON object of named results.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    ConnectionWindow,
    InNetns,
    NetnsPair,
    RsyncDaemon,
    add_agent_in_netns,
    console,
    emit_json,
    file_hash,
    goal,
    machine_info,
    mapping_acked,
    median,
    overwrite_file,
    peer_port,
    poll_until,
    print_machine,
    require_tools,
    rmtree,
    rsync_wire_bytes,
    src_revision,
    start_master_on,
    tool_version,
)

MIB = 1024 * 1024
CASES = ("scattered", "insert", "append", "text")
GOAL_BYTES = 1.0
GOAL_TIME = 1.0
FLOOR_TIME = 1.5
GOAL_LIMITED_TIME = 1.0
OLD_MTIME = 1_600_000_000  # the rsync target's old copy: an mtime clearly older than the new file


# ------------------------------------------------------------------ data


def _text_lines(rng: random.Random, total: int) -> list[bytes]:
    vocab = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10)))
        for _ in range(4000)
    ]
    lines: list[bytes] = []
    size = 0
    i = 0
    while size < total:
        line = f"{i:08d} {' '.join(rng.choices(vocab, k=rng.randint(3, 16)))}\n".encode()
        lines.append(line)
        size += len(line)
        i += 1
    return lines


def case_versions(
    case: str, size: int, seed: int = 20261123
) -> tuple[bytes, Callable[[int], bytes], str]:
    """(old, new_version(run), description) for one case; seeded, a different base per case.

    Every run gets its own new version (the same kind of change, other offsets/bytes): relaysync's
    source keeps the deltas it computed for 10 minutes keyed by (base, new version), so repeating one
    identical update would measure a cache hit, not a delta.
    """
    rng = random.Random(f"{seed}-{case}")
    if case == "text":
        lines = _text_lines(rng, size)
        old = b"".join(lines)
        n_edit = max(1, len(lines) // 100)

        def new_text(run: int) -> bytes:
            erng = random.Random(f"{seed}-{case}-edits-{run}")
            edited = list(lines)
            for idx in erng.sample(range(len(lines)), n_edit):
                words = [
                    "".join(erng.choices("abcdefghijklmnopqrstuvwxyz", k=erng.randint(2, 10)))
                    for _ in range(erng.randint(3, 16))
                ]
                edited[idx] = f"{idx:08d} {' '.join(words)}\n".encode()
            return b"".join(edited)

        return (
            old,
            new_text,
            (
                f"{len(old) / MIB:.1f} MiB text, {len(lines):,} lines; {n_edit:,} lines (1 %) "
                f"replaced by new lines of random length"
            ),
        )
    old = rng.randbytes(size)
    if case == "scattered":

        def new_scattered(run: int) -> bytes:
            erng = random.Random(f"{seed}-{case}-edits-{run}")
            buf = bytearray(old)
            slot = size // 100
            for i in range(100):
                off = i * slot + erng.randrange(slot - 10 * 1024)
                buf[off : off + 10 * 1024] = erng.randbytes(10 * 1024)
            return bytes(buf)

        return (
            old,
            new_scattered,
            f"{size / MIB:.0f} MiB random; 100 edits of 10 KiB, one per 1/100 of the file",
        )
    if case == "insert":
        mid = size // 2
        return (
            old,
            (
                lambda run: (
                    old[:mid] + random.Random(f"{seed}-{case}-{run}").randbytes(MIB) + old[mid:]
                )
            ),
            f"{size / MIB:.0f} MiB random; 1 MiB of new random bytes inserted at {mid:,}",
        )
    if case == "append":
        extra = size // 10
        return (
            old,
            (lambda run: old + random.Random(f"{seed}-{case}-{run}").randbytes(extra)),
            f"{size / MIB:.0f} MiB random; {extra:,} B (10 %) appended",
        )
    raise ValueError(case)


# ------------------------------------------------------------------ one side of the comparison


@dataclass
class Side:
    """Where one phase (loopback or limited) runs: a relaysync fleet and an rsync daemon."""

    label: str
    cluster: Any
    mapping_id: int
    src_dir: Path
    tgt_dir: Path
    rsyncd: RsyncDaemon
    rsync_src: Path
    rsync_dst: Path
    t1_port: int
    timeout_s: float


def wait_target(side: Side, name: str, size: int, digest: bytes, old_ino: int | None) -> float:
    """Bounded poll (5 ms) of the target copy: a new inode (relaysync commits by rename) of the new
    size; then the content is compared once (not timed). Returns perf_counter at detection."""
    path = side.tgt_dir / name
    state: dict[str, float] = {}

    def done() -> bool:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if st.st_size != size or st.st_ino == old_ino:
            return False
        t = time.perf_counter()
        if file_hash(path) != digest:
            return False  # an intermediate version; keep polling
        state["t"] = t
        return True

    poll_until(done, timeout_s=side.timeout_s, interval_s=0.005, what=f"{path} to equal the source")
    return state["t"]


def relaysync_update(side: Side, name: str, data: bytes, digest: bytes) -> dict[str, Any]:
    """Overwrite the source file with `data`; time to identical on t1; bytes on the wire."""
    tgt = side.tgt_dir / name
    try:
        old_ino: int | None = os.stat(tgt).st_ino
    except FileNotFoundError:
        old_ino = None
    window = ConnectionWindow(side.t1_port)
    window.start()
    overwrite_file(side.src_dir / name, data)
    t0 = time.perf_counter()
    t1 = wait_target(side, name, len(data), digest, old_ino)
    try:
        poll_until(
            lambda: mapping_acked(side.cluster, side.mapping_id),
            timeout_s=60,
            interval_s=0.05,
            what="the target's ack",
        )
    except BenchError as exc:
        console.print(f"    [yellow]note: {exc}; bytes counted so far[/yellow]")
    sent, received, conns = window.stop()
    return {"s": t1 - t0, "sent": sent, "received": received, "conns": conns}


def rsync_update(side: Side, name: str, old: bytes, new_digest: bytes) -> dict[str, Any]:
    """The daemon's module holds the old version; rsync the (new) source file over it."""
    import subprocess

    dst = side.rsync_dst / name
    overwrite_file(dst, old)
    os.utime(dst, (OLD_MTIME, OLD_MTIME))
    cmd = [
        "rsync",
        "-a",
        "--no-whole-file",
        "--stats",
        str(side.rsync_src / name),
        side.rsyncd.url("mod"),
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=side.timeout_s)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()[-500:]}")
    sent, received = rsync_wire_bytes(out.stdout)
    if file_hash(dst) != new_digest:
        raise BenchError(f"rsync left {dst} different from the source")
    literal = ""
    for line in out.stdout.splitlines():
        if line.startswith(("Literal data:", "Matched data:")):
            literal += line.strip() + "; "
    return {"s": dt, "sent": sent, "received": received, "detail": literal.strip("; ")}


def run_case(side: Side, case: str, runs: int, results: dict[str, Any], prefix: str) -> None:
    t_gen = time.perf_counter()
    old, new_version, desc = case_versions(case, 100 * MIB)
    old_digest = file_hash_bytes(old)
    name = f"{case}.txt" if case == "text" else f"{case}.bin"
    console.print(
        f"  [bold]{case}[/bold]: {desc} (generated in {time.perf_counter() - t_gen:.1f} s)"
    )
    side.rsync_src.mkdir(parents=True, exist_ok=True)

    # The old version reaches t1 through relaysync first (whole-file copy; the source signs it).
    first = relaysync_update(side, name, old, old_digest)
    console.print(
        f"    old version replicated (whole copy): {first['s']:.2f} s, "
        f"{(first['sent'] + first['received']) / MIB:.1f} MiB on the wire"
    )
    results[f"{prefix}first_copy_s_{case}"] = round(first["s"], 3)
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for r in range(runs):
        if r > 0:  # back to the old version (itself a delta), so that the next update starts equal
            relaysync_update(side, name, old, old_digest)
        new = new_version(r)
        new_digest = file_hash_bytes(new)
        # rsync reads its own copy of the new version, so the two can run in either order.
        overwrite_file(side.rsync_src / name, new)
        for who in ("ours", "rsync") if r % 2 == 0 else ("rsync", "ours"):
            if who == "ours":
                m = relaysync_update(side, name, new, new_digest)
                ours.append(m)
                console.print(
                    f"    run {r + 1}/{runs} relaysync: {m['s']:.3f} s, {m['sent']:,} B to t1 + "
                    f"{m['received']:,} B back ({m['conns']} connection(s))"
                )
            else:
                m = rsync_update(side, name, old, new_digest)
                theirs.append(m)
                console.print(
                    f"    run {r + 1}/{runs} rsync daemon: {m['s']:.3f} s, {m['sent']:,} B sent + "
                    f"{m['received']:,} B received ({m['detail']})"
                )
    o_s = median(m["s"] for m in ours)
    r_s = median(m["s"] for m in theirs)
    o_b = int(median(m["sent"] + m["received"] for m in ours))
    r_b = int(median(m["sent"] + m["received"] for m in theirs))
    results[f"{prefix}ours_s_{case}"] = round(o_s, 3)
    results[f"{prefix}rsync_s_{case}"] = round(r_s, 3)
    results[f"{prefix}ours_bytes_{case}"] = o_b
    results[f"{prefix}ours_bytes_to_target_{case}"] = int(median(m["sent"] for m in ours))
    results[f"{prefix}rsync_bytes_{case}"] = r_b
    results[f"{prefix}ours_s_runs_{case}"] = [round(m["s"], 3) for m in ours]
    results[f"{prefix}rsync_s_runs_{case}"] = [round(m["s"], 3) for m in theirs]
    results[f"{prefix}bytes_ratio_{case}"] = round(o_b / r_b, 3)
    results[f"{prefix}time_ratio_{case}"] = round(o_s / r_s, 3)
    console.print(
        f"    => {side.label}: relaysync {o_s:.3f} s / {o_b:,} B vs rsync {r_s:.3f} s / {r_b:,} B: "
        f"time {o_s / r_s:.2f}x, bytes {o_b / r_b:.3f}x (medians of {runs})"
    )
    (side.src_dir / name).unlink()
    (side.rsync_src / name).unlink()


def file_hash_bytes(data: bytes) -> bytes:
    import xxhash

    return xxhash.xxh3_128(data).digest()


def engine_breakdown(work: Path, case: str, results: dict[str, Any]) -> None:
    """In-process block search and librsync patch on the same data (the floor of relaysync's
    per-update work)."""
    from relaysync.transfer import _librsync
    from relaysync.transfer import delta as delta_engine
    from relaysync.watch.scanner import hash_file

    if not _librsync.available() or not delta_engine.available():
        console.print(
            "    [yellow]block search or librsync not available in-process: no engine breakdown[/yellow]"
        )
        return
    d = work / f"engine-{case}"
    d.mkdir()
    old, new_version, _ = case_versions(case, 100 * MIB)
    (d / "old").write_bytes(old)
    (d / "new").write_bytes(new_version(0))
    del old, new_version
    t0 = time.perf_counter()
    delta_engine.signature(d / "old", d / "sig")
    t1 = time.perf_counter()
    delta_engine.delta(d / "sig", d / "new", d / "delta")
    t2 = time.perf_counter()
    _librsync.patch(d / "old", d / "delta", d / "out")
    t3 = time.perf_counter()
    hash_file(d / "new")
    t4 = time.perf_counter()
    if file_hash(d / "out") != file_hash(d / "new"):
        raise BenchError(f"the delta of {case} does not reproduce the new version")
    results[f"engine_signature_s_{case}"] = round(t1 - t0, 3)
    results[f"engine_delta_s_{case}"] = round(t2 - t1, 3)
    results[f"engine_patch_s_{case}"] = round(t3 - t2, 3)
    results[f"engine_hash_s_{case}"] = round(t4 - t3, 3)
    results[f"delta_file_bytes_{case}"] = (d / "delta").stat().st_size
    results[f"signature_file_bytes_{case}"] = (d / "sig").stat().st_size
    console.print(
        f"    {case}: signature {t1 - t0:.3f} s ({(d / 'sig').stat().st_size:,} B), delta {t2 - t1:.3f} s "
        f"({(d / 'delta').stat().st_size:,} B), patch {t3 - t2:.3f} s, xxh3 hash {t4 - t3:.3f} s"
    )
    rmtree(d)


# ------------------------------------------------------------------ phases


def phase_loopback(
    work: Path, runs: int, cases: tuple[str, ...], results: dict[str, Any], timeout_s: float
) -> None:
    from relaysync.testing.cluster import Cluster

    base = work / "loopback"
    cluster = Cluster(base / "cluster")
    rsyncd = RsyncDaemon(base / "rsyncd", {"mod": base / "rsync-dst"})
    try:
        cluster.start_master()
        cluster.start_agent("src", wait=False)
        cluster.start_agent("t1", wait=False)
        cluster.wait_agent_up("src")
        cluster.wait_agent_up("t1")
        rsyncd.start()
        src_dir, tgt_dir = base / "src", base / "t1"
        src_dir.mkdir()
        m = cluster.create_mapping("delta-lo", "src", src_dir, [("t1", tgt_dir)], durability="fast")
        mid = int(m["id"])
        poll_until(
            lambda: tgt_dir.is_dir() and mapping_acked(cluster, mid),
            timeout_s=60,
            interval_s=0.05,
            what="the empty mapping to be live",
        )
        side = Side(
            "loopback",
            cluster,
            mid,
            src_dir,
            tgt_dir,
            rsyncd,
            base / "rsync-src",
            base / "rsync-dst",
            peer_port(cluster, "t1"),
            timeout_s,
        )
        console.print(
            f"  fleet up on 127.0.0.1 (master {cluster.api_url}, t1 peer port {side.t1_port}); "
            f"rsync daemon on port {rsyncd.port}"
        )
        for case in cases:
            run_case(side, case, runs, results, "")
    except Exception:
        for name, agent in cluster.agents.items():
            console.print(f"--- agent {name} log tail ---\n{agent.process.log_tail(20)}")
        raise
    finally:
        cluster.stop()
        rsyncd.stop()


def phase_limited(
    work: Path, runs: int, cases: tuple[str, ...], results: dict[str, Any], timeout_s: float
) -> None:
    from relaysync.testing.cluster import Cluster

    base = work / "limited"
    net = NetnsPair(str(os.getpid()))
    cluster = Cluster(base / "cluster")
    rsyncd = RsyncDaemon(
        base / "rsyncd",
        {"mod": base / "rsync-dst"},
        address=net.addr_tgt,
        port=8873,
        netns=net.ns_tgt,
    )
    try:
        net.open()
        console.print(
            f"  namespaces {net.ns_src} ({net.addr_src}/30: master, agent src, rsync client) and "
            f"{net.ns_tgt} ({net.addr_tgt}/30: agent t1, rsync daemon), veth {net.veth_src}<->"
            f"{net.veth_tgt}, tc qdisc {' '.join(net.tbf)} on both ends"
        )
        # This thread (API calls, `ss`, the rsync client, and the master and src it starts) joins
        # the source namespace; t1 and the rsync daemon are started with `ip netns exec NS_TGT`.
        with InNetns(net.ns_src):
            try:
                start_master_on(cluster, net.addr_src)
                cluster.start_agent("src", extra_args=["--listen", f"{net.addr_src}:0"], wait=False)
                add_agent_in_netns(cluster, "t1", net.ns_tgt, f"{net.addr_tgt}:0")
                cluster.start_agent("t1", wait=False)
                cluster.wait_agent_up("src")
                cluster.wait_agent_up("t1")
                rsyncd.start()
                src_dir, tgt_dir = base / "src", base / "t1"
                src_dir.mkdir()
                m = cluster.create_mapping(
                    "delta-lim", "src", src_dir, [("t1", tgt_dir)], durability="fast"
                )
                mid = int(m["id"])
                poll_until(
                    lambda: tgt_dir.is_dir() and mapping_acked(cluster, mid),
                    timeout_s=60,
                    interval_s=0.05,
                    what="the empty mapping to be live",
                )
                addr = cluster.api.get("/api/servers/t1").json()["address"]
                if not addr.startswith(net.addr_tgt + ":"):
                    raise BenchError(f"t1 advertises {addr}, not an address in {net.ns_tgt}")
                side = Side(
                    "100 Mbit/s link",
                    cluster,
                    mid,
                    src_dir,
                    tgt_dir,
                    rsyncd,
                    base / "rsync-src",
                    base / "rsync-dst",
                    peer_port(cluster, "t1"),
                    timeout_s,
                )
                console.print(
                    f"  fleet up: master {cluster.api_url}, t1 at {addr}; rsync daemon "
                    f"{rsyncd.url('mod')}"
                )
                for case in cases:
                    run_case(side, case, runs, results, "limited_")
                console.print("  tc counters:\n" + net.qdisc_stats())
            except Exception:
                for name, agent in cluster.agents.items():
                    console.print(f"--- agent {name} log tail ---\n{agent.process.log_tail(20)}")
                raise
            finally:
                cluster.stop()
                rsyncd.stop()
    finally:
        net.close()


# ------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--runs", type=int, default=3, help="updates per case and side (median reported)"
    )
    ap.add_argument("--quick", action="store_true", help="one run per case")
    ap.add_argument(
        "--no-limited", action="store_true", help="skip the 100 Mbit/s part (reported as MISS)"
    )
    ap.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES)
    )
    ap.add_argument(
        "--workdir", type=Path, default=None, help="parent for the temp dir (default /tmp)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (for debugging)")
    ap.add_argument("--timeout", type=float, default=600.0, help="bound for each wait, s")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    cases = tuple(c for c in args.cases.split(",") if c)
    if any(c not in CASES for c in cases):
        ap.error(f"unknown case in {args.cases}")

    require_tools("rsync", "ss", "ip", "tc")
    if os.geteuid() != 0 and not args.no_limited:
        console.print(
            "[red]error: the limited-link part needs root (ip netns, tc); run as root or pass "
            "--no-limited (it is then reported as MISS)[/red]"
        )
        return 2
    info = machine_info()
    print_machine(info)
    rev = src_revision()
    console.print(f"rsync: {tool_version('rsync')}; relaysync checkout {rev}")
    console.print(
        "durability: relaysync mapping 'fast' vs plain rsync (neither fsyncs); zstd off on the "
        "relaysync link (default zstd_level 0) and no -z for rsync; warm page cache; "
        "source and targets on the same filesystem"
    )

    work = Path(tempfile.mkdtemp(prefix="relaysync-bench-delta-", dir=args.workdir))
    results: dict[str, Any] = {
        "bench": "delta",
        "runs": runs,
        "file_mib": 100,
        **{f"machine_{k}": v for k, v in info.items()},
        "src_revision": rev,
        "bytes_method": (
            "relaysync: ss -tin kernel counters (bytes_acked+bytes_received, "
            "TCP payload incl. TLS records and pings) of the source agent's "
            "sockets to t1's peer port, from before the overwrite until "
            "t1's ack; rsync: --stats total bytes sent + received"
        ),
        "text_file": "generated lines, ~100 MiB, 1 % of lines replaced",
    }
    rc = 0
    try:
        console.rule("librsync engine alone, in-process (diagnosis)")
        for case in cases:
            engine_breakdown(work, case, results)

        console.rule("loopback: relaysync vs rsync daemon on 127.0.0.1")
        phase_loopback(work, runs, cases, results, args.timeout)

        console.rule("100 Mbit/s link: two network namespaces, veth, tbf")
        if args.no_limited:
            results["limited_error"] = "skipped by --no-limited"
        else:
            try:
                phase_limited(work, runs, cases, results, args.timeout)
            except Exception as exc:  # noqa: BLE001 - reported as MISS with the reason, loopback kept
                results["limited_error"] = f"{type(exc).__name__}: {exc}"
                console.print(f"[red]limited-link part failed: {results['limited_error']}[/red]")
        for case in cases:
            results.setdefault(f"limited_time_ratio_{case}", None)
    except Exception as exc:
        console.print(f"[red]benchmark failed: {type(exc).__name__}: {exc}[/red]")
        results["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1

    console.rule("goals")
    for case in cases:
        b, t = results.get(f"bytes_ratio_{case}"), results.get(f"time_ratio_{case}")
        lt = results.get(f"limited_time_ratio_{case}")
        if b is not None:
            results[f"goal_bytes_{case}"] = goal(
                f"{case}: bytes <= {GOAL_BYTES}x rsync",
                b <= GOAL_BYTES,
                f"{results[f'ours_bytes_{case}']:,} B vs "
                f"{results[f'rsync_bytes_{case}']:,} B = {b}x",
            )
        if t is not None:
            results[f"goal_time_{case}"] = goal(
                f"{case}: loopback time <= {GOAL_TIME}x rsync (floor {FLOOR_TIME}x: "
                f"{'within' if t <= FLOOR_TIME else 'ABOVE'})",
                t <= GOAL_TIME,
                f"{results[f'ours_s_{case}']} s vs {results[f'rsync_s_{case}']} s = {t}x",
            )
            results[f"goal_time_floor_{case}"] = t <= FLOOR_TIME
        if lt is not None:
            results[f"goal_limited_time_{case}"] = goal(
                f"{case}: 100 Mbit/s time <= {GOAL_LIMITED_TIME}x rsync",
                lt <= GOAL_LIMITED_TIME,
                f"{results[f'limited_ours_s_{case}']} s vs {results[f'limited_rsync_s_{case}']} s = {lt}x",
            )
        else:
            results[f"goal_limited_time_{case}"] = None
            goal(
                f"{case}: 100 Mbit/s time <= {GOAL_LIMITED_TIME}x rsync",
                False,
                f"not measured: {results.get('limited_error', 'loopback part failed first')}",
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
