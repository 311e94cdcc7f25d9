"""Shared helpers for the relaysync benchmarks (bench/scale.py, bench/latency.py).

Nothing here changes relaysync; everything drives it from outside (in-process library calls or
the `relaysync.testing.cluster.Cluster` of real processes) and measures wall time with
time.perf_counter(). Every wait is a bounded poll of a condition, never a fixed sleep.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(highlight=False)

TEMP_PREFIX = ".relaysync."  # relaysync's staging names; never counted as part of a tree


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ machine / output


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_machine(info: dict[str, Any]) -> None:
    console.print(f"[bold]machine[/bold]: {info['nproc']} CPUs, {info['cpu']}, {info['mem_gib']} GiB, "
                  f"kernel {info['kernel']}, Python {info['python']}, "
                  f"load {info['loadavg_at_start']}, date {info['date']}")


def require_tools(*names: str) -> dict[str, str]:
    """Exit non-zero with a clear message if a peer we compare with is not installed."""
    found: dict[str, str] = {}
    missing = []
    for name in names:
        path = shutil.which(name)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        console.print(f"[red]error: required comparison tool(s) not installed: {', '.join(missing)}. "
                      f"Install them (Debian: apt-get install {' '.join(missing)}); this benchmark "
                      f"never skips a comparison.[/red]")
        sys.exit(2)
    return found


def tool_version(name: str) -> str:
    try:
        out = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def goal(name: str, ok: bool, detail: str) -> bool:
    tag = "[green]PASS[/green]" if ok else "[red]MISS[/red]"
    console.print(f"  {tag} {name}: {detail}")
    return ok


def emit_json(results: dict[str, Any]) -> None:
    """The LAST line of every benchmark: one JSON object of named results."""
    sys.stdout.flush()
    print(json.dumps(results, sort_keys=False), flush=True)


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


# ------------------------------------------------------------------ waiting


def poll_until(condition: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.02,
               what: str = "condition", max_iterations: int = 10_000_000) -> Any:
    """Poll until truthy; bounded in time and count. Raises BenchError on timeout."""
    deadline = time.monotonic() + timeout_s
    for _ in range(max_iterations):
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    raise BenchError(f"timed out after {timeout_s} s waiting for {what}")


# ------------------------------------------------------------------ trees


def make_tree(root: Path, files: int, *, top: int = 10, sub: int = 100, max_size: int = 8192,
              seed: int = 1234) -> tuple[int, int, int]:
    """Build `files` files of 0..max_size bytes (seeded) spread over top x sub folders.

    Returns (files, dirs, bytes). Content comes from one seeded random pool, sliced at random
    offsets, so files differ but generating 100k of them is cheap.
    """
    rng = random.Random(seed)
    pool = rng.randbytes(4 * 1024 * 1024)
    dirs = [root / f"d{t:02d}" / f"s{s:03d}" for t in range(top) for s in range(sub)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(files):
        size = rng.randint(0, max_size)
        off = rng.randrange(0, len(pool) - max_size)
        data = pool[off:off + size]
        with open(dirs[i % len(dirs)] / f"f{i:06d}.bin", "wb") as fh:
            fh.write(data)
        total += size
    return files, len(dirs) + top, total


def tree_summary(root: Path) -> tuple[int, int]:
    """(regular file count, total bytes) via os.scandir, ignoring relaysync staging names."""
    count = size = 0
    stack = [str(root)]
    steps = 0
    while stack and steps < 50_000_000:
        steps += 1
        top = stack.pop()
        try:
            it = os.scandir(top)
        except FileNotFoundError:
            continue
        with it:
            for de in it:
                if de.name.startswith(TEMP_PREFIX):
                    continue
                if de.is_dir(follow_symlinks=False):
                    stack.append(de.path)
                elif de.is_file(follow_symlinks=False):
                    count += 1
                    size += de.stat(follow_symlinks=False).st_size
    return count, size


def tree_digest(root: Path) -> dict[str, str]:
    """relpath -> blake2b of content for every regular file (the full check, never timed)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
        for name in filenames:
            if name.startswith(TEMP_PREFIX):
                continue
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.blake2b(fh.read(), digest_size=16).hexdigest()
    return out


def trees_equal(a: Path, b: Path) -> tuple[bool, str]:
    da, db = tree_digest(a), tree_digest(b)
    if da == db:
        return True, f"{len(da)} files identical"
    missing = set(da) - set(db)
    extra = set(db) - set(da)
    differ = [k for k in set(da) & set(db) if da[k] != db[k]]
    return False, f"missing {len(missing)}, extra {len(extra)}, differ {len(differ)}"


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ processes


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a process, MiB; psutil is not required."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def timed_run(cmd: list[str], *, timeout_s: float = 1800) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


# ------------------------------------------------------------------ per-connection TCP bytes

_SS_BYTES = re.compile(r"\b(bytes_sent|bytes_received|bytes_acked):(\d+)")


def ss_connections(dport: int) -> dict[tuple[str, str], dict[str, int]]:
    """Established TCP sockets whose peer port is `dport`, with their kernel byte counters.

    Key: (local address, peer address). Counters are cumulative for the socket's lifetime
    (payload bytes, TCP/IP headers not included; TLS record overhead included).
    """
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( dport = :{dport} )"],
        capture_output=True, text=True, timeout=10,
    ).stdout
    conns: dict[tuple[str, str], dict[str, int]] = {}
    current: tuple[str, str] | None = None
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            parts = line.split()
            # Recv-Q Send-Q Local Peer (state column omitted with a state filter)
            addrs = [p for p in parts if ":" in p]
            if len(addrs) >= 2:
                current = (addrs[0], addrs[1])
                conns.setdefault(current, {})
            # ss may print counters on the same line with -H on some versions
        if current is not None:
            for k, v in _SS_BYTES.findall(line):
                conns[current][k] = int(v)
    return conns


class ConnectionBytes:
    """Track the highest counters seen per connection to one port while polling."""

    def __init__(self, dport: int) -> None:
        self.dport = dport
        self.seen: dict[tuple[str, str], dict[str, int]] = {}

    def sample(self) -> None:
        for key, counters in ss_connections(self.dport).items():
            prev = self.seen.setdefault(key, {})
            for k, v in counters.items():
                prev[k] = max(prev.get(k, 0), v)

    @property
    def sent(self) -> int:
        return sum(c.get("bytes_sent", 0) for c in self.seen.values())

    @property
    def received(self) -> int:
        return sum(c.get("bytes_received", 0) for c in self.seen.values())
