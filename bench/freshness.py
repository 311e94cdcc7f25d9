"""Freshness benchmark: a change on the source -> every cache (Varnish, nginx, Squid) serves it.

One Cluster (master, "src", "t1" as processes on 127.0.0.1), a mapping src -> t1, an origin web
server serving t1's folder, and Varnish, nginx (cache-purge module) and Squid in front of it, each
started by relaysync.testing.caches with its configuration (every answer cached for 1 h, so only
a purge makes a cache serve new bytes). One site (POST /api/sites) lists the three caches, with
t1 as its origin.

Changes: overwrites of one of FILES files with fresh random content of the same size (the hard
case for validators), one at a time. After close() on the source, the target file is polled in a
thread (stat every 0.2 ms, content compared when stat changes: that is when the commit became
visible on the origin) and every cache is polled with a GET (keep-alive, Host www.example.com,
every ~1 ms, bounded 10 s). Per change:
    from_close  = last cache serving the new bytes - close()
    from_commit = last cache serving the new bytes - new bytes visible in the target file
    <cache>     = that cache serving the new bytes - new bytes visible in the target file
Beside it, a TTL-only setup: a second mapping (src -> t1, another folder) with NO site, its own
origin (sends Cache-Control: max-age=TTL) and the same three caches configured with that TTL
instead of 1 h; one URL is changed at a random moment (uniform in 0..TTL) after every cache serves
the previous version, and the stale window is commit -> every cache serves the new bytes,
bounded by TTL + 5 s.

Usage: python bench/freshness.py [--quick] [--changes N] [--ttl S] [--ttl-changes N] [--workdir DIR]
The last line printed is one JSON object of named results.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    console,
    emit_json,
    goal,
    machine_info,
    overwrite_file,
    percentile,
    poll_until,
    print_machine,
    rmtree,
)

CHANGES = 300
QUICK_CHANGES = 60
WARMUP = 3
FILES = 20
SIZES = (512, 1024, 2048, 4096, 8192)  # per file, fixed: every rewrite keeps the size
POLL_S = 0.001  # cache GET poll interval (--poll-ms)
FILE_POLL_S = 0.0002  # target file stat poll interval
BOUND_S = 10.0
TTL_S = 10
TTL_CHANGES = 20
QUICK_TTL_CHANGES = 6
TTL_MARGIN_S = 5.0
GOAL_P99_MS = 50.0
HOST = "www.example.com"
KINDS = ("varnish", "nginx", "squid")
PURGE_MODULE = Path("/usr/lib/nginx/modules/ngx_http_cache_purge_module.so")

# The origin as a separate process (the testing Origin's handler, same answers), so that the
# benchmark's polling threads never share a GIL with the server the caches and the purger fetch
# from. max-age 0: no Cache-Control header (as the testing Origin).
ORIGIN_SCRIPT = r"""
import functools, sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
root, port, max_age = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
class Handler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass
    def end_headers(self):
        if max_age > 0:
            self.send_header("Cache-Control", f"max-age={max_age}")
        super().end_headers()
class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # socketserver's 5 overflows under a burst: connects wait 1-7 s
server = Server(("127.0.0.1", port), functools.partial(Handler, directory=root))
server.serve_forever()
"""


# ------------------------------------------------------------------ prerequisites


def require_caches() -> dict[str, str]:
    missing = [n for n in ("varnishd", "nginx", "squid") if shutil.which(n) is None]
    packages = {"varnishd": "varnish", "nginx": "nginx", "squid": "squid"}
    if not PURGE_MODULE.exists():
        missing.append(str(PURGE_MODULE))
    if missing:
        pkgs = [packages.get(m, "libnginx-mod-http-cache-purge") for m in missing]
        console.print(
            f"[red]error: required cache server(s) not installed: {', '.join(missing)}. "
            f"Install them (Debian: apt-get install {' '.join(pkgs)}); this benchmark "
            f"measures the real servers and never skips one.[/red]"
        )
        sys.exit(2)
    versions = {}
    for name, argv in (
        ("varnish", ["varnishd", "-V"]),
        ("nginx", ["nginx", "-v"]),
        ("squid", ["squid", "-v"]),
    ):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (out.stdout + out.stderr).strip().splitlines()
            versions[name] = text[0] if text else "?"
        except (OSError, subprocess.TimeoutExpired):
            versions[name] = "?"
    return versions


def cpu_pressure() -> float | None:
    """/proc/pressure/cpu "some" avg60 (% of time some task waited for a CPU); None if absent."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(first.split("avg60=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ origin and caches


class OriginProcess:
    """`python -c ORIGIN_SCRIPT root port max_age`, started and stopped by pid."""

    def __init__(self, root: Path, max_age: int = 0) -> None:
        self.root, self.max_age = root, max_age
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OriginProcess:
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-c",
                ORIGIN_SCRIPT,
                str(self.root),
                str(self.port),
                str(self.max_age),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def up() -> bool:
            if self.popen is not None and self.popen.poll() is not None:
                raise BenchError(f"origin web server exited with {self.popen.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        poll_until(up, timeout_s=20, interval_s=0.02, what="origin web server listening")
        return self

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


def make_ttl_cache_class() -> type:
    """testing.caches.Cache with the 1 h lifetime of its configurations replaced by `ttl_s`."""
    from dataclasses import dataclass as dc

    from relaysync.testing.caches import Cache

    replacements = {
        "varnish": [("set beresp.ttl = 1h;", "set beresp.ttl = @TTL@s;")],
        "nginx": [
            ("proxy_cache_valid 200 301 302 404 1h;", "proxy_cache_valid 200 301 302 404 @TTL@s;")
        ],
        # Squid's refresh_pattern counts whole minutes: the origin's max-age sets the lifetime.
        "squid": [
            ("refresh_pattern . 60 20% 1440 override-lastmod", "refresh_pattern . 0 20% 1"),
            ("negative_ttl 1 hour", "negative_ttl @TTL@ seconds"),
        ],
    }

    @dc
    class TtlCache(Cache):  # type: ignore[misc]
        ttl_s: int = 0

        def _fill(self, template: str) -> str:
            text = super()._fill(template)
            if self.ttl_s:
                for old, new in replacements[self.kind]:
                    if old not in text:
                        raise BenchError(
                            f"{self.kind} configuration in relaysync.testing.caches changed: "
                            f"{old!r} not found; update bench/freshness.py"
                        )
                    text = text.replace(old, new.replace("@TTL@", str(self.ttl_s)))
            return text

    return TtlCache


class CacheClient:
    """One keep-alive HTTP/1.1 connection to a cache; reconnects when the cache closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                self.conn.request("GET", path, headers={"Host": HOST})
                r = self.conn.getresponse()
                body = r.read()
                if r.will_close:
                    self.conn.close()
                    self.conn = None
                return r.status, body
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ------------------------------------------------------------------ measurement


class CommitWatch:
    """A thread that polls the target file until it holds `data`; `seen` = perf_counter then."""

    def __init__(self, path: Path, data: bytes, bound_s: float) -> None:
        self.path, self.data, self.bound_s = path, data, bound_s
        self.seen: float | None = None
        self.seen_wall: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.perf_counter() + self.bound_s
        last: tuple[int, int, int] | None = None
        for _ in range(int(self.bound_s / FILE_POLL_S) * 4 + 1000):
            try:
                st = os.stat(self.path)
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                if key != last and st.st_size == len(self.data):
                    last = key
                    with open(self.path, "rb") as fh:
                        if fh.read() == self.data:
                            self.seen, self.seen_wall = time.perf_counter(), time.time()
                            return
            except FileNotFoundError:
                pass
            if time.perf_counter() > deadline:
                return
            time.sleep(FILE_POLL_S)

    def join(self) -> None:
        self._thread.join(self.bound_s + 5)


def wait_caches(
    clients: dict[str, CacheClient], path: str, data: bytes, bound_s: float
) -> dict[str, float | None]:
    """GET `path` from every cache every ~POLL_S until each serves `data`; perf_counter per cache."""
    seen: dict[str, float | None] = {k: None for k in clients}
    pending = list(clients)
    deadline = time.perf_counter() + bound_s
    for _ in range(int(bound_s / POLL_S) * 4 + 1000):
        still = []
        for kind in pending:
            status, body = clients[kind].get(path)
            if status == 200 and body == data:
                seen[kind] = time.perf_counter()
            else:
                still.append(kind)
        pending = still
        if not pending or time.perf_counter() > deadline:
            break
        time.sleep(POLL_S)
    return seen


def write_source(path: Path, data: bytes) -> float:
    """Overwrite in place from offset 0 (same size: no truncation); return perf_counter after close()."""
    overwrite_file(path, data)
    return time.perf_counter()


@dataclass
class Change:
    rel: str
    t_close: float
    t_commit: float | None
    commit_wall: float | None
    t_cache: dict[str, float | None]

    def last_cache(self) -> float | None:
        vals = list(self.t_cache.values())
        return None if any(v is None for v in vals) else max(v for v in vals if v is not None)


def summarise(name: str, xs_ms: list[float], results: dict[str, Any], key: str) -> None:
    p50, p99 = percentile(xs_ms, 50), percentile(xs_ms, 99)
    results[f"{key}p50_ms"] = round(p50, 2)
    results[f"{key}p99_ms"] = round(p99, 2)
    results[f"{key}max_ms"] = round(max(xs_ms), 2)
    console.print(
        f"  {name:44} n={len(xs_ms):4}  p50 {p50:9.2f} ms  p99 {p99:9.2f} ms  max {max(xs_ms):9.2f} ms"
    )


# ------------------------------------------------------------------ phases


def start_caches(base: Path, origin_port: int, ttl_s: int) -> dict[str, Any]:
    cls = make_ttl_cache_class()
    caches: dict[str, Any] = {}
    try:
        for kind in KINDS:
            caches[kind] = cls(kind, base / kind, origin_port, ttl_s=ttl_s).start()
    except BaseException:
        for c in caches.values():
            c.stop()
        raise
    return caches


def wait_target_tree(src: Path, dst: Path, names: list[str], timeout_s: float) -> None:
    def same() -> bool:
        for n in names:
            try:
                if (dst / n).read_bytes() != (src / n).read_bytes():
                    return False
            except FileNotFoundError:
                return False
        return True

    poll_until(same, timeout_s=timeout_s, interval_s=0.05, what=f"{len(names)} files on the target")


def purge_phase(
    cluster: Any,
    work: Path,
    cache_base: Path,
    n_changes: int,
    results: dict[str, Any],
    rng: random.Random,
) -> None:
    src, dst = work / "purge-src", work / "purge-t1"
    src.mkdir()
    dst.mkdir()
    os.chmod(dst, 0o755)
    names = [f"page-{i:02d}.html" if i % 2 == 0 else f"sub/page-{i:02d}.html" for i in range(FILES)]
    (src / "sub").mkdir()
    sizes = {n: SIZES[i % len(SIZES)] for i, n in enumerate(names)}
    for n in names:
        (src / n).write_bytes(os.urandom(sizes[n]))
    m = cluster.create_mapping("fresh-purge", "src", src, [("t1", dst)])
    wait_target_tree(src, dst, names, 60)
    console.print(
        f"  mapping {m['name']} (durability {m.get('durability', 'default')}): {FILES} files on t1"
    )

    origin = OriginProcess(dst).start()
    caches: dict[str, Any] = {}
    clients: dict[str, CacheClient] = {}
    try:
        caches = start_caches(cache_base / "purge", origin.port, ttl_s=0)
        console.print(
            "  origin "
            + origin.url
            + "; caches "
            + ", ".join(f"{k} {c.address}" for k, c in caches.items())
            + " (TTL 1 h, testing/caches.py)"
        )
        r = cluster.api.post(
            "/api/sites",
            json={
                "name": "fresh",
                "provider": "bench",
                "mapping": m["name"],
                "base_urls": [f"http://{HOST}"],
                "caches": [
                    {"name": k, "driver": k, "address": c.address} for k, c in caches.items()
                ],
                "origins": [{"server": "t1", "url": origin.url}],
            },
        )
        if r.status_code != 201:
            raise BenchError(f"create site: {r.status_code} {r.text}")
        clients = {k: CacheClient(c.port) for k, c in caches.items()}
        for n in names:  # warm every cache with every file
            seen = wait_caches(clients, "/" + n, (dst / n).read_bytes(), 10)
            if any(v is None for v in seen.values()):
                raise BenchError(f"warming /{n}: a cache does not serve the origin's bytes: {seen}")

        changes: list[Change] = []
        timeouts = 0
        for i in range(-WARMUP, n_changes):
            rel = names[(i + WARMUP) % FILES]
            data = os.urandom(sizes[rel])
            t_close = write_source(src / rel, data)
            watch = CommitWatch(dst / rel, data, BOUND_S)
            t_cache = wait_caches(
                clients, "/" + rel, data, BOUND_S - (time.perf_counter() - t_close)
            )
            watch.join()
            if watch.seen is None:
                raise BenchError(f"change {i}: {rel} never reached t1 within {BOUND_S} s")
            if i < 0:
                continue
            ch = Change(rel, t_close, watch.seen, watch.seen_wall, t_cache)
            if ch.last_cache() is None:
                timeouts += 1
                console.print(
                    f"  [red]change {i}: {rel} not served by "
                    f"{[k for k, v in t_cache.items() if v is None]} within {BOUND_S} s[/red]"
                )
            changes.append(ch)
            if (i + 1) % 50 == 0:
                console.print(f"  ... {i + 1} changes")

        def ms(a: float | None, b: float | None) -> float:
            return BOUND_S * 1000 if a is None or b is None else (a - b) * 1000

        from_close = [ms(c.last_cache(), c.t_close) for c in changes]
        from_commit = [ms(c.last_cache(), c.t_commit) for c in changes]
        sync = [ms(c.t_commit, c.t_close) for c in changes]
        console.print(
            f"  {len(changes)} changes measured ({WARMUP} warm-up), {timeouts} timed out at {BOUND_S} s"
        )
        summarise("close() -> new bytes in the target file", sync, results, "sync_")
        summarise("close() -> every cache serves them", from_close, results, "from_close_")
        results["p99_ms_from_close"] = results.pop("from_close_p99_ms")
        results["p50_ms_from_close"] = results.pop("from_close_p50_ms")
        results["max_ms_from_close"] = results.pop("from_close_max_ms")
        summarise("target commit -> every cache serves them", from_commit, results, "")
        for kind in KINDS:
            summarise(
                f"target commit -> {kind} serves them",
                [ms(c.t_cache[kind], c.t_commit) for c in changes],
                results,
                f"{kind}_",
            )
        results["changes"] = len(changes)
        results["timeouts"] = timeouts
        purge_log_breakdown(cluster, changes, results)
    finally:
        for c in clients.values():
            c.close()
        for c in caches.values():
            c.stop()
        origin.stop()


def purge_log_breakdown(cluster: Any, changes: list[Change], results: dict[str, Any]) -> None:
    """From /api/purges: per cache, commit -> the purger starts the item, and the item's duration."""

    def settled() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = []
        before = None
        for _ in range(100):
            params: dict[str, Any] = {"site": "fresh", "limit": 1000}
            if before is not None:
                params["before"] = before
            page = cluster.api.get("/api/purges", params=params).json()
            rows += page
            if len(page) < 1000:
                break
            before = page[-1]["id"]
        # the purger writes outcomes every 0.1 s: wait until the last change's are there
        last = changes[-1]
        mine = [
            r
            for r in rows
            if r["url"].endswith("/" + last.rel)
            and last.commit_wall is not None
            and r["at"] >= last.commit_wall
        ]
        return rows if len(mine) >= len(KINDS) else None

    rows = poll_until(
        settled, timeout_s=15, interval_s=0.1, what="the last change's purges in /api/purges"
    )
    statuses: dict[str, int] = {}
    retried = 0
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        retried += int(r["attempts"] > 1)
    by_url: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["at"]):
        by_url.setdefault(r["url"].split(HOST, 1)[1], []).append(r)
    start_delay: dict[str, list[float]] = {k: [] for k in KINDS}
    duration: dict[str, list[float]] = {k: [] for k in KINDS}
    for idx, ch in enumerate(changes):
        if ch.commit_wall is None:
            continue
        nxt = next(
            (c.commit_wall for c in changes[idx + 1 :] if c.rel == ch.rel and c.commit_wall),
            float("inf"),
        )
        for r in by_url.get("/" + ch.rel, []):
            started = r["at"] - r["duration_ms"] / 1000
            if ch.commit_wall - 0.05 <= started < nxt and r["action"] == "refresh":
                start_delay[r["cache"]].append((started - ch.commit_wall) * 1000)
                duration[r["cache"]].append(r["duration_ms"])
    results["purge_log_statuses"] = statuses
    results["purge_log_retried"] = retried
    console.print(
        f"  purge log: {len(rows)} rows, statuses {statuses}, {retried} needed more than one attempt"
    )
    for kind in KINDS:
        if start_delay[kind]:
            summarise(
                f"{kind}: target commit -> purger starts the item",
                start_delay[kind],
                results,
                f"{kind}_commit_to_purge_start_",
            )
            summarise(
                f"{kind}: refresh + confirm (purge log duration)",
                duration[kind],
                results,
                f"{kind}_purge_duration_",
            )


def ttl_phase(
    cluster: Any,
    work: Path,
    cache_base: Path,
    ttl_s: int,
    n_changes: int,
    results: dict[str, Any],
    rng: random.Random,
) -> None:
    src, dst = work / "ttl-src", work / "ttl-t1"
    src.mkdir()
    dst.mkdir()
    os.chmod(dst, 0o755)
    rel, size = "page.html", 2048
    data = os.urandom(size)
    (src / rel).write_bytes(data)
    m = cluster.create_mapping("fresh-ttl", "src", src, [("t1", dst)])
    wait_target_tree(src, dst, [rel], 60)
    origin = OriginProcess(dst, max_age=ttl_s).start()
    caches: dict[str, Any] = {}
    clients: dict[str, CacheClient] = {}
    try:
        caches = start_caches(cache_base / "ttl", origin.port, ttl_s=ttl_s)
        console.print(
            f"  mapping {m['name']} with NO site; origin {origin.url} (Cache-Control: max-age={ttl_s}); "
            "caches "
            + ", ".join(f"{k} {c.address}" for k, c in caches.items())
            + f" (TTL {ttl_s} s)"
        )
        clients = {k: CacheClient(c.port) for k, c in caches.items()}
        bound = ttl_s + TTL_MARGIN_S
        seen = wait_caches(clients, "/" + rel, data, bound)
        if any(v is None for v in seen.values()):
            raise BenchError(f"TTL setup: a cache does not serve the origin's bytes: {seen}")
        windows: list[float] = []
        per: dict[str, list[float]] = {k: [] for k in KINDS}
        timeouts = 0
        for i in range(n_changes):
            # the change lands at a uniformly random moment of the cached copies' lifetime
            time.sleep(rng.uniform(0, ttl_s))
            data = os.urandom(size)
            write_source(src / rel, data)
            watch = CommitWatch(dst / rel, data, BOUND_S)
            t_cache = wait_caches(clients, "/" + rel, data, bound)
            watch.join()
            if watch.seen is None:
                raise BenchError(f"TTL change {i}: never reached t1 within {BOUND_S} s")
            got = [v for v in t_cache.values() if v is not None]
            if len(got) < len(t_cache):
                timeouts += 1
                windows.append(bound * 1000)
            else:
                windows.append((max(got) - watch.seen) * 1000)
            for k, v in t_cache.items():
                per[k].append(bound * 1000 if v is None else (v - watch.seen) * 1000)
            console.print(
                f"  TTL change {i + 1}/{n_changes}: stale for {windows[-1]:8.1f} ms after the commit "
                f"({', '.join(f'{k} {per[k][-1]:.0f}' for k in KINDS)})"
            )
        summarise(f"TTL-only ({ttl_s} s): commit -> every cache", windows, results, "ttl_only_")
        for kind in KINDS:
            summarise(f"TTL-only: commit -> {kind}", per[kind], results, f"ttl_only_{kind}_")
        results["ttl_only_changes"] = n_changes
        results["ttl_only_ttl_s"] = ttl_s
        results["ttl_only_timeouts"] = timeouts
    finally:
        for c in clients.values():
            c.close()
        for c in caches.values():
            c.stop()
        origin.stop()


# ------------------------------------------------------------------ main


def main() -> int:
    global POLL_S
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CHANGES} changes, {QUICK_TTL_CHANGES} TTL-only",
    )
    ap.add_argument(
        "--changes", type=int, default=None, help=f"changes with purging (default {CHANGES})"
    )
    ap.add_argument(
        "--ttl",
        type=int,
        default=TTL_S,
        help=f"cache TTL of the TTL-only setup, s (default {TTL_S})",
    )
    ap.add_argument(
        "--ttl-changes", type=int, default=None, help=f"TTL-only changes (default {TTL_CHANGES})"
    )
    ap.add_argument(
        "--poll-ms",
        type=float,
        default=POLL_S * 1000,
        help="cache GET poll interval, ms (default 1)",
    )
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="parent for the temp dir (default /tmp)"
    )
    args = ap.parse_args()
    POLL_S = args.poll_ms / 1000
    n_changes = args.changes or (QUICK_CHANGES if args.quick else CHANGES)
    n_ttl = args.ttl_changes or (QUICK_TTL_CHANGES if args.quick else TTL_CHANGES)
    if n_changes < 1 or n_ttl < 1 or args.ttl < 1:
        ap.error("--changes, --ttl-changes and --ttl must be >= 1")

    versions = require_caches()
    info = machine_info()
    print_machine(info)
    console.print(f"CPU pressure (/proc/pressure/cpu some avg60): {cpu_pressure()} %")
    console.print("caches: " + "; ".join(f"{k}: {v}" for k, v in versions.items()))
    console.print(
        f"workload: {n_changes} overwrites of {FILES} files ({'/'.join(str(s) for s in SIZES)} B, "
        f"same size each time) one at a time, {WARMUP} warm-up; cache GET every {POLL_S * 1000:.0f} ms, "
        f"target file stat every {FILE_POLL_S * 1000:.1f} ms, bound {BOUND_S:.0f} s. TTL-only: "
        f"{n_ttl} changes, TTL {args.ttl} s"
    )
    console.print(
        "commit time = the moment the new bytes are visible in t1's file (polled; the job log and "
        "the purge log carry no per-target commit time)"
    )

    from relaysync.testing.caches import cache_base_dir
    from relaysync.testing.cluster import Cluster

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="relaysync-bench-freshness-", dir=args.workdir))
    os.chmod(work, 0o755)
    cache_base = cache_base_dir()
    results: dict[str, Any] = {
        "bench": "freshness",
        "changes": n_changes,
        **{f"machine_{k}": v for k, v in info.items()},
        "machine_cpu_pressure_some_avg60_at_start": cpu_pressure(),
        "cache_versions": versions,
        "poll_ms": args.poll_ms,
        "commit_time_method": "new bytes visible in the target (origin) file, "
        f"stat polled every {FILE_POLL_S * 1000:.1f} ms in a thread",
    }
    rc = 0
    cluster = Cluster(work / "cluster")
    try:
        cluster.start_master()
        for name in ("src", "t1"):
            cluster.start_agent(name, wait=False)
        for name in ("src", "t1"):
            cluster.wait_agent_up(name)
        console.print(f"  fleet up: master {cluster.api_url}, agents src, t1")
        console.rule("purging: a site lists the three caches (TTL 1 h)")
        purge_phase(cluster, work, cache_base, n_changes, results, rng)
        console.rule(f"TTL-only: no site, the same caches with TTL {args.ttl} s")
        ttl_phase(cluster, work, cache_base, args.ttl, n_ttl, results, rng)

        console.rule("goals")
        results["goal_p99"] = goal(
            f"p99 < {GOAL_P99_MS:.0f} ms from the commit on the origin to every cache",
            results["p99_ms"] < GOAL_P99_MS,
            f"{results['p99_ms']} ms (p50 {results['p50_ms']} ms; from close() "
            f"p99 {results['p99_ms_from_close']} ms)",
        )
        console.print(
            f"  beside it, TTL-only ({args.ttl} s): p50 {results['ttl_only_p50_ms']} ms, "
            f"p99 {results['ttl_only_p99_ms']} ms stale after the commit (the testing caches' own "
            "TTL is 1 h: a TTL-only setup with it would serve stale bytes for up to an hour)"
        )
    except Exception as exc:
        console.print(f"[red]benchmark failed: {type(exc).__name__}: {exc}[/red]")
        for name, agent in cluster.agents.items():
            console.print(f"--- agent {name} log tail ---\n{agent.process.log_tail(15)}")
        if cluster.master is not None:
            console.print(f"--- master log tail ---\n{cluster.master.log_tail(30)}")
        results["error"] = f"{type(exc).__name__}: {exc}"
        rc = 1
    finally:
        cluster.stop()
        results["machine_loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["machine_cpu_pressure_some_avg60_at_end"] = cpu_pressure()
        rmtree(cache_base)
        rmtree(work)
    emit_json(results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
