"""A/B of the 10k-file first copy: checkouts side by side, each round against `rsync -a`.

bulk.py's 10k case (10,000 files of 4 KiB in 100 folders, durability fast) for one or more
checkouts of relaysync, in the same run: one fleet per checkout (master + agents `src`, `t1` as
processes, their code from that checkout's `src` via PYTHONPATH), started at once; then rounds of
`rsync -a` into a fresh dir followed by each checkout's copy into a fresh dir, interleaved, so
that the host's drift (its speed for Python moved 1.8x within a day on this VM) hits every side
alike. Per copy: the time from the mapping's creation to the target holding the same file count
and size (as bulk.py), the CPU seconds of each process (from /proc), and how busy each process
was in 50 ms slices (printed with `--timeline`), which shows whether the source or the target
holds the copy up. Nothing is deleted before the end (ext4 skips recently freed inodes: a copy
right after a deletion of 10,000 files pays for it).

The tree is aged `--age` seconds first (default 31: past the hot-file hold, where a scan asks
each file written in the last `hot_file_s` without a close-write with a read lease; that is 1 s
by default, and 31 s clears an agent configured up to 30 s; bulk.py's runs start past the
default). Each checkout's `src` must have its compiled extensions built
(`python setup.py build_ext --inplace` in it).

    python3 bench/ab10k.py --src /path/a/src --src /path/b/src [--rounds 4] [--workdir DIR]
    python3 bench/ab10k.py                     # this checkout alone, against rsync

The last line printed is one JSON object of named results.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    console,
    emit_json,
    first_change_ns,
    machine_info,
    median,
    print_machine,
    require_tools,
    rmtree,
    timed_run,
    tree_summary,
    trees_equal,
)
from bulk import make_small_tree  # noqa: E402
from scale import wait_tree_equal  # noqa: E402

SLICE_S = 0.05
PROCESSES = ("src", "t1", "master")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """How busy each process was, in SLICE_S slices, while a copy runs (a thread of its own)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), {k: cpu_s(p) for k, p in self.pids.items()}))
            self._stop.wait(SLICE_S)

    def busy(self, since: float) -> list[tuple[float, dict[str, int]]]:
        """(seconds since `since`, percent of a core per process) for each slice after it."""
        out = []
        for (ta, ca), (tb, cb) in zip(self.samples, self.samples[1:], strict=False):
            if tb < since or tb <= ta:
                continue
            out.append((tb - since, {k: round(100 * (cb[k] - ca[k]) / (tb - ta)) for k in ca}))
        return out


def start_fleet(base: Path, src_dir: Path | None) -> Any:
    from relaysync.testing.cluster import Cluster

    cluster = Cluster(base)
    if src_dir is not None:
        cluster.extra_env["PYTHONPATH"] = str(src_dir)
    cluster.start_master()
    cluster.start_agent("src", wait=False)
    cluster.start_agent("t1", wait=False)
    cluster.wait_agent_up("src")
    cluster.wait_agent_up("t1")
    return cluster


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--src",
        type=Path,
        action="append",
        default=[],
        help="a checkout's src directory (repeat for each side; default: this checkout's)",
    )
    ap.add_argument("--rounds", type=int, default=4, help="copies per side (default 4)")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--age", type=float, default=31.0, help="seconds to age the tree first")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir")
    ap.add_argument("--timeline", action="store_true", help="print each copy's busy slices")
    ap.add_argument("--timeout", type=float, default=600.0, help="bound for each copy, s")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write py-spy's collapsed stacks of each process, per copy, into this directory",
    )
    ap.add_argument(
        "--perf",
        type=Path,
        default=None,
        help="write a `perf record -g` of the three processes, per copy, into this directory",
    )
    args = ap.parse_args()
    sides: list[Path | None] = [p.resolve() for p in args.src] or [None]
    for side in sides:
        if side is not None and not (side / "relaysync" / "__init__.py").is_file():
            console.print(f"[red]{side} is not a src directory holding relaysync[/red]")
            return 2
    require_tools("rsync")
    info = machine_info()
    print_machine(info)
    names = [str(s) if s is not None else "this checkout" for s in sides]
    work = Path(tempfile.mkdtemp(prefix="relaysync-bench-ab10k-", dir=args.workdir))
    results: dict[str, Any] = {
        "bench": "ab10k",
        "rounds": args.rounds,
        "files": args.files,
        **{f"machine_{k}": v for k, v in info.items()},
        "sides": names,
    }
    fleets: list[Any] = []
    try:
        src = work / "src"
        make_small_tree(src, args.files)
        built = time.time()
        summary = tree_summary(src)
        last_dir = sorted(src.iterdir())[-1]
        last_count = sum(1 for _ in os.scandir(last_dir))
        for i, side in enumerate(sides):
            fleets.append(start_fleet(work / f"fleet-{i}", side))
        time.sleep(max(0.0, built + args.age - time.time()))  # the tree's age, not a sync wait
        rsync_s: list[float] = []
        ours: list[list[dict[str, Any]]] = [[] for _ in sides]
        for r in range(args.rounds):
            dst = work / f"rsync-{r}"
            os.sync()
            rsync_s.append(timed_run(["rsync", "-a", f"{src}/", f"{dst}/"], timeout_s=args.timeout))
            console.print(f"round {r + 1}/{args.rounds}: rsync -a {rsync_s[-1]:.3f} s")
            for i, cluster in enumerate(fleets):
                ours[i].append(
                    copy_once(
                        cluster,
                        src,
                        work / f"t{i}-{r}",
                        r,
                        args,
                        summary,
                        last_dir.name,
                        last_count,
                    )
                )
                run = ours[i][-1]
                console.print(
                    f"  {names[i]}: {run['s']:.3f} s ({run['s'] / rsync_s[-1]:.2f}x), first "
                    f"change at {run['first_s']:.3f} s, CPU-s "
                    + ", ".join(f"{k} {run['cpu_s'][k]:.2f}" for k in PROCESSES)
                )
        results["rsync_s"] = round(median(rsync_s), 3)
        results["rsync_s_runs"] = [round(x, 3) for x in rsync_s]
        for i, runs in enumerate(ours):
            key = f"side{i}"
            results[f"{key}_s"] = round(median(r["s"] for r in runs), 3)
            results[f"{key}_s_runs"] = [round(r["s"], 3) for r in runs]
            results[f"{key}_ratio"] = round(results[f"{key}_s"] / results["rsync_s"], 3)
            results[f"{key}_first_s"] = round(median(r["first_s"] for r in runs), 3)
            for k in PROCESSES:
                results[f"{key}_cpu_s_{k}"] = round(median(r["cpu_s"][k] for r in runs), 3)
            console.print(
                f"{names[i]}: median {results[f'{key}_s']} s vs rsync {results['rsync_s']} s = "
                f"{results[f'{key}_ratio']}x; first change at {results[f'{key}_first_s']} s; CPU-s "
                + ", ".join(f"{k} {results[f'{key}_cpu_s_{k}']}" for k in PROCESSES)
            )
    except BenchError as exc:
        console.print(f"[red]benchmark failed: {exc}[/red]")
        results["error"] = str(exc)
        return 1
    finally:
        for cluster in fleets:
            cluster.stop()
        rmtree(work)
        emit_json(results)
    return 0


def copy_once(
    cluster: Any,
    src: Path,
    dst: Path,
    round_no: int,
    args: argparse.Namespace,
    summary: tuple[int, int],
    last_name: str,
    last_count: int,
) -> dict[str, Any]:
    """One first copy of `src` into `dst` through `cluster`: its time and CPU per process."""
    assert cluster.master is not None
    pids = {
        "src": cluster.agents["src"].process.pid,
        "t1": cluster.agents["t1"].process.pid,
        "master": cluster.master.pid,
    }
    os.sync()
    tag = f"{cluster.base.name}-{round_no}"
    spies = start_profilers(args.profile, pids, tag) + start_perf(args.perf, pids, tag)
    before = {k: cpu_s(p) for k, p in pids.items()}
    with Sampler(pids) as sampler:
        t0_wall = time.time()
        t0 = time.perf_counter()
        mapping = cluster.create_mapping(
            f"ab10k-{round_no}", "src", src, [("t1", dst)], durability="fast"
        )
        end = wait_tree_equal(summary, dst, dst / last_name, last_count, args.timeout)
    after = {k: cpu_s(p) for k, p in pids.items()}
    stop_profilers(spies)
    ok, detail = trees_equal(src, dst)
    if not ok:
        raise BenchError(f"target {dst} differs from the source: {detail}")
    if args.timeline:
        console.print(
            "    busy % src/t1/master: "
            + " ".join(
                f"{t:.2f}:" + "/".join(str(b[k]) for k in PROCESSES)
                for t, b in sampler.busy(t0_wall)
            )
        )
    reply = cluster.api.delete(f"/api/mappings/{mapping['id']}")
    if reply.status_code not in (200, 204):
        raise BenchError(f"delete mapping: {reply.status_code} {reply.text}")
    return {
        "s": end - t0,
        "first_s": first_change_ns(dst) / 1e9 - t0_wall,
        "cpu_s": {k: after[k] - before[k] for k in PROCESSES},
    }


def start_profilers(
    out: Path | None, pids: dict[str, int], tag: str
) -> list[subprocess.Popen[bytes]]:
    """py-spy on each process (250 Hz, without pausing it), collapsed stacks into `out`."""
    if out is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, pid in pids.items():
        cmd = ["py-spy", "record", "--nonblocking", "--threads", "-r", "250", "-f", "raw"]
        cmd += ["-o", str(out / f"{tag}-{name}.txt"), "--pid", str(pid)]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)  # py-spy attaches before the copy starts; not a sync wait
    return spies


def start_perf(out: Path | None, pids: dict[str, int], tag: str) -> list[subprocess.Popen[bytes]]:
    """`perf record -g` (999 Hz) of the three processes into `out`/`tag`.data."""
    if out is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["perf", "record", "-g", "-F", "999", "-o", str(out / f"{tag}.data")]
    cmd += ["-p", ",".join(str(p) for p in pids.values())]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf attaches before the copy starts; not a sync wait
    return [spy]


def stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    """Stop the profilers (SIGINT makes py-spy write its file), each bounded to 10 s."""
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
