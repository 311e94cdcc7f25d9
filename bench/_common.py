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
    console.print(
        f"[bold]machine[/bold]: {info['nproc']} CPUs, {info['cpu']}, {info['mem_gib']} GiB, "
        f"kernel {info['kernel']}, Python {info['python']}, "
        f"load {info['loadavg_at_start']}, date {info['date']}"
    )


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
        console.print(
            f"[red]error: required comparison tool(s) not installed: {', '.join(missing)}. "
            f"Install them (Debian: apt-get install {' '.join(missing)}); this benchmark "
            f"never skips a comparison.[/red]"
        )
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


def poll_until(
    condition: Callable[[], Any],
    *,
    timeout_s: float,
    interval_s: float = 0.02,
    what: str = "condition",
    max_iterations: int = 10_000_000,
) -> Any:
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


def make_tree(
    root: Path, files: int, *, top: int = 10, sub: int = 100, max_size: int = 8192, seed: int = 1234
) -> tuple[int, int, int]:
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
        data = pool[off : off + size]
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


def last_change_ns(root: Path) -> int:
    """The latest inode change (st_ctime_ns) of anything in the tree, root included: when the
    kernel saw the copy's last write, rename or mkdir. Both tools are timed to it, so neither
    pays for the way the bench notices the end (a process exit, or polling plus a summary)."""
    return max(os.lstat(root).st_ctime_ns, *_ctimes_below(root))


def first_change_ns(root: Path) -> int:
    """The earliest inode change (st_ctime_ns) of anything below `root` (not root itself): when
    the first file or folder of a copy landed (0: nothing there)."""
    return min(_ctimes_below(root), default=0)


def _ctimes_below(root: Path) -> list[int]:
    """st_ctime_ns of everything below `root`, relaysync's staging names left out."""
    out: list[int] = []
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for de in it:
                if de.name.startswith(TEMP_PREFIX):
                    continue
                out.append(de.stat(follow_symlinks=False).st_ctime_ns)
                if de.is_dir(follow_symlinks=False):
                    stack.append(de.path)
    return out


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
                out[os.path.relpath(p, root)] = hashlib.blake2b(
                    fh.read(), digest_size=16
                ).hexdigest()
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

_SS_BYTES = re.compile(r"\b(bytes_sent|bytes_received|bytes_acked|bytes_retrans):(\d+)")


def ss_connections(dport: int) -> dict[tuple[str, str], dict[str, int]]:
    """Established TCP sockets whose peer port is `dport`, with their kernel byte counters.

    Key: (local address, peer address). Counters are cumulative for the socket's lifetime
    (payload bytes, TCP/IP headers not included; TLS record overhead included). `bytes_sent`
    counts retransmissions too: loopback retransmits when a busy receiver's queue is pruned
    (TcpExtPruneCalled), 0-3.5 MB per GiB here, so the sent side is measured by `sent_bytes`.
    """
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( dport = :{dport} )"],
        capture_output=True,
        text=True,
        timeout=10,
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


def sent_bytes(counters: dict[str, int]) -> int:
    """Payload the peer acknowledged (bytes_acked, i.e. without retransmissions; rsync's --stats
    counts what it wrote, never a retransmission); bytes_sent where ss gives no bytes_acked."""
    return counters.get("bytes_acked", counters.get("bytes_sent", 0))


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
        return sum(sent_bytes(c) for c in self.seen.values())

    @property
    def retransmitted(self) -> int:
        return sum(c.get("bytes_retrans", 0) for c in self.seen.values())

    @property
    def received(self) -> int:
        return sum(c.get("bytes_received", 0) for c in self.seen.values())


# ------------------------------------------------------------------ delta.py / bulk.py additions


def src_revision() -> str:
    """The commit of the checkout under test, and whether src/ has uncommitted edits (shared tree)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return head + (" + uncommitted src/ edits" if dirty else "")


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_tcp(host: str, port: int, timeout_s: float = 20.0) -> None:
    """Bounded poll until something accepts TCP connections on host:port."""
    import socket

    def up() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    poll_until(
        up, timeout_s=timeout_s, interval_s=0.05, what=f"{host}:{port} accepting connections"
    )


def file_hash(path: Path) -> bytes:
    """xxh3-128 of a file's content (fast enough to check 1 GiB; never timed)."""
    import xxhash

    h = xxhash.xxh3_128()
    buf = bytearray(4 * 1024 * 1024)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.digest()


def overwrite_file(path: Path, data: bytes) -> None:
    """Replace a file's content in place with one write(2) from offset 0 (no truncation to 0 first,
    so a watcher never sees an empty or half-length file); truncate only if the new one is shorter."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        off = 0
        while off < len(view):
            off += os.pwrite(fd, view[off:], off)
        if os.fstat(fd).st_size > len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


_RSYNC_STAT = re.compile(r"^Total bytes (sent|received):\s*([\d,.]+)", re.M)


def rsync_wire_bytes(stats_output: str) -> tuple[int, int]:
    """(bytes sent, bytes received) from `rsync --stats` output (rsync protocol payload)."""
    found = {
        k: int(v.replace(",", "").replace(".", "")) for k, v in _RSYNC_STAT.findall(stats_output)
    }
    if "sent" not in found or "received" not in found:
        raise BenchError(
            f"no 'Total bytes sent/received' in rsync --stats output:\n{stats_output[-2000:]}"
        )
    return found["sent"], found["received"]


def spawn_logged(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server this script owns, in its own session, its output appended to `log_path`."""
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def wait_greeting(
    popen: subprocess.Popen[bytes],
    address: str,
    port: int,
    greeting: bytes,
    log_path: Path,
    what: str,
) -> None:
    """Poll until the server on address:port greets with `greeting` (it speaks first)."""
    import socket

    def up() -> bool:
        if popen.poll() is not None:
            raise BenchError(f"{what} exited: {log_path.read_text()[-500:]}")
        try:
            with socket.create_connection((address, port), timeout=0.5) as s:
                s.settimeout(2)
                return s.recv(64).startswith(greeting)
        except OSError:
            return False

    poll_until(up, timeout_s=20, interval_s=0.05, what=f"{what} greeting")


def stop_child(popen: subprocess.Popen[bytes] | None, timeout_s: float = 10) -> None:
    """SIGTERM a process this script started; SIGKILL if it has not exited within timeout_s."""
    if popen is None or popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout_s)


class RsyncDaemon:
    """`rsync --daemon --no-detach` with one writable module per target dir, started and stopped by pid.

    With `netns`, it runs inside that network namespace (`ip netns exec NS rsync ...`; ip execs
    rsync in place, so the pid is rsync's).
    """

    def __init__(
        self,
        workdir: Path,
        modules: dict[str, Path],
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        netns: str = "",
    ) -> None:
        self.dir = workdir
        self.modules = modules
        self.address = address
        self.port = port or free_port(address)
        self.netns = netns
        self.popen: subprocess.Popen[bytes] | None = None

    def url(self, module: str) -> str:
        return f"rsync://{self.address}:{self.port}/{module}/"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "rsyncd.conf"
        lines = [
            "use chroot = no",
            "uid = root",
            "gid = root",
            "read only = false",
            f"log file = {self.dir / 'rsyncd.log'}",
            "",
        ]
        for name, path in self.modules.items():
            path.mkdir(parents=True, exist_ok=True)
            lines += [f"[{name}]", f"    path = {path}", ""]
        conf.write_text("\n".join(lines))
        cmd = [
            "rsync",
            "--daemon",
            "--no-detach",
            "--address",
            self.address,
            "--port",
            str(self.port),
            "--config",
            str(conf),
        ]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.popen = spawn_logged(cmd, self.dir / "rsyncd.stderr")
        wait_greeting(
            self.popen,
            self.address,
            self.port,
            b"@RSYNCD",
            self.dir / "rsyncd.stderr",
            "rsync daemon",
        )

    def stop(self) -> None:
        stop_child(self.popen)


class SshServer:
    """A private `sshd -D` on 127.0.0.1 for `rsync -e ssh` (an encrypted peer for our TLS links):
    its own host key, one authorized client key, no PAM; started and stopped by pid."""

    CIPHER = "aes256-gcm@openssh.com"  # what our TLS 1.3 links negotiate (TLS_AES_256_GCM_SHA384)

    def __init__(self, workdir: Path, *, address: str = "127.0.0.1") -> None:
        self.dir = workdir
        self.address = address
        self.port = free_port(address)
        self.popen: subprocess.Popen[bytes] | None = None

    def rsync_shell(self) -> str:
        """The `-e` argument of rsync for this server."""
        return (
            f"ssh -p {self.port} -i {self.dir / 'client_key'} -c {self.CIPHER} -o BatchMode=yes "
            f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        for key in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / key)],
                check=True,
                capture_output=True,
                timeout=30,
            )
        (self.dir / "authorized_keys").write_text((self.dir / "client_key.pub").read_text())
        conf = self.dir / "sshd_config"
        conf.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}",
                    f"Port {self.port}",
                    f"HostKey {self.dir / 'host_key'}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    f"Ciphers {self.CIPHER}",
                    "Compression no",
                    "",
                ]
            )
        )
        self.popen = spawn_logged(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)], self.dir / "sshd.stderr"
        )
        wait_greeting(
            self.popen, self.address, self.port, b"SSH-", self.dir / "sshd.stderr", "sshd"
        )

    def stop(self) -> None:
        stop_child(self.popen)


class ConnectionWindow:
    """Bytes exchanged on connections to one port between start() and stop().

    A baseline of the per-socket kernel counters is taken at start(); a sampler thread then reads
    them every `interval_s` (so a connection that closes meanwhile still counts up to its last
    sample). Result: sum over sockets of (last seen - baseline), sent and received separately.
    """

    def __init__(self, dport: int, interval_s: float = 0.1) -> None:
        import threading

        self.dport = dport
        self.interval_s = interval_s
        self.baseline: dict[tuple[str, str], dict[str, int]] = {}
        self.bytes = ConnectionBytes(dport)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.retransmitted = 0  # bytes sent again (not in `sent`), set by stop()

    def start(self) -> None:
        import threading

        self.baseline = ss_connections(self.dport)
        self.bytes.seen = {k: dict(v) for k, v in self.baseline.items()}

        def run() -> None:
            for _ in range(10_000_000):
                if self._stop.is_set():
                    return
                try:
                    self.bytes.sample()
                except Exception:  # noqa: BLE001 - retried at the next interval
                    pass
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[int, int, int]:
        """Return (sent and acknowledged, received, connections seen); `retransmitted` is set too."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.bytes.sample()
        sent = received = retransmitted = 0
        for key, counters in self.bytes.seen.items():
            base = self.baseline.get(key, {})
            sent += sent_bytes(counters) - sent_bytes(base)
            received += counters.get("bytes_received", 0) - base.get("bytes_received", 0)
            retransmitted += counters.get("bytes_retrans", 0) - base.get("bytes_retrans", 0)
        self.retransmitted = retransmitted
        return sent, received, len(self.bytes.seen)


# ------------------------------------------------------------------ network namespaces

CLONE_NEWNET = 0x40000000


def _run_ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")


class NetnsPair:
    """Two network namespaces joined by a veth pair, each end shaped by `tc ... tbf`.

    Addresses (a /30) exist only inside the two namespaces; nothing is added to the root
    namespace. `close()` deletes both namespaces (which removes the veth), also after a failure.
    """

    def __init__(
        self,
        tag: str,
        *,
        subnet: str = "10.211.77",
        rate: str = "100mbit",
        burst: str = "256kb",
        latency: str = "50ms",
    ) -> None:
        tag = tag[:8]
        self.ns_src, self.ns_tgt = f"rsb{tag}s", f"rsb{tag}t"
        self.veth_src, self.veth_tgt = f"rsb{tag}vs", f"rsb{tag}vt"
        self.addr_src, self.addr_tgt = f"{subnet}.1", f"{subnet}.2"
        self.tbf = ["tbf", "rate", rate, "burst", burst, "latency", latency]
        self.created: list[str] = []

    def open(self) -> NetnsPair:
        for ns in (self.ns_src, self.ns_tgt):
            _run_ip("netns", "add", ns)
            self.created.append(ns)
        _run_ip("link", "add", self.veth_src, "type", "veth", "peer", "name", self.veth_tgt)
        try:
            _run_ip("link", "set", self.veth_src, "netns", self.ns_src)
            _run_ip("link", "set", self.veth_tgt, "netns", self.ns_tgt)
        except BenchError:
            subprocess.run(["ip", "link", "del", self.veth_src], capture_output=True, timeout=30)
            raise
        for ns, dev, addr in (
            (self.ns_src, self.veth_src, self.addr_src),
            (self.ns_tgt, self.veth_tgt, self.addr_tgt),
        ):
            _run_ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _run_ip("-n", ns, "link", "set", "lo", "up")
            _run_ip("-n", ns, "link", "set", dev, "up")
            r = subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", *self.tbf],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if r.returncode != 0:
                raise BenchError(
                    f"tc qdisc add dev {dev} root {' '.join(self.tbf)} in {ns}: {r.stderr.strip()}"
                )
        return self

    def qdisc_stats(self) -> str:
        out = []
        for ns, dev in ((self.ns_src, self.veth_src), (self.ns_tgt, self.veth_tgt)):
            r = subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev],
                capture_output=True,
                text=True,
                timeout=30,
            )
            out.append(f"{ns}/{dev}: " + " ".join(r.stdout.split()))
        return "\n".join(out)

    def close(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created.clear()


class InNetns:
    """Move the *calling thread* into a named network namespace for a with-block (setns(2)).

    Sockets this thread opens, and processes it starts, live in that namespace; threads it starts
    inherit it. The thread's previous namespace is restored on exit.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._old = -1

    def _setns(self, fd: int) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise BenchError(f"setns({self.name}): {os.strerror(err)}")

    def __enter__(self) -> InNetns:
        self._old = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            self._setns(fd)
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._setns(self._old)
        finally:
            os.close(self._old)


def start_master_on(cluster: Any, host: str) -> None:
    """Like Cluster.start_master, but the REST API and the control port listen on `host`."""
    import httpx

    from relaysync.constants import HTTP_TIMEOUT_S
    from relaysync.testing.cluster import START_TIMEOUT_S, Process, wait_until

    cluster.master_dir.mkdir(parents=True, exist_ok=True)
    state = cluster.master_dir / "master.json"
    state.unlink(missing_ok=True)
    args = [
        "master",
        "--data",
        str(cluster.master_dir),
        "--listen",
        f"{host}:0",
        "--control-listen",
        f"{host}:0",
    ]
    cluster.master = Process("master", args, cluster.base / "master.log")
    cluster.master.start(cluster._env() | {"RELAYSYNC_CONTROL_LISTEN": f"{host}:0"})
    info = wait_until(
        lambda: cluster._read_state(state), timeout_s=START_TIMEOUT_S, what="master start"
    )
    cluster.api_url = info["api_url"]
    token = (cluster.master_dir / "admin-token").read_text().strip()
    cluster._client = httpx.Client(
        base_url=cluster.api_url,
        timeout=HTTP_TIMEOUT_S,
        headers={"Authorization": f"Bearer {token}"},
        verify=cluster.api_verify(),  # off loopback the API serves https (the fleet's CA)
    )


def add_agent_in_netns(cluster: Any, name: str, netns: str, listen: str) -> None:
    """Register agent `name` with the cluster so that it runs as `ip netns exec NETNS python -m
    relaysync agent ... --listen LISTEN`; start it with cluster.start_agent(name, ...)."""
    from dataclasses import dataclass

    from relaysync.testing.cluster import Agent, Process

    @dataclass
    class NetnsProcess(Process):
        netns: str = ""

        def start(self, env: dict[str, str]) -> None:
            log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "relaysync", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            log.close()

    data = cluster.base / "agents" / name
    data.mkdir(parents=True, exist_ok=True)
    args = [
        "agent",
        "--master",
        cluster.api_url,
        "--token",
        cluster.join_token,
        "--name",
        name,
        "--data",
        str(data),
        "--region",
        "default",
        "--group",
        "default",
        "--listen",
        listen,
    ]
    cluster.agents[name] = Agent(
        name, data, NetnsProcess(name, args, cluster.base / f"agent-{name}.log", netns=netns)
    )


def mapping_acked(cluster: Any, mapping_id: int) -> bool:
    r = cluster.api.get(f"/api/mappings/{mapping_id}/status")
    if r.status_code != 200:
        return False
    rows = r.json()
    rows = rows if isinstance(rows, list) else rows.get("targets", [])
    return bool(rows) and all(int(x.get("lag", 1)) == 0 for x in rows)


def peer_port(cluster: Any, name: str) -> int:
    addr = cluster.api.get(f"/api/servers/{name}").json()["address"]
    return int(addr.rsplit(":", 1)[1])


# ------------------------------------------------------------------ fanout.py additions


def wait_all_identical(
    paths: list[Path], data: bytes, t_start: float, *, bound_s: float, poll_s: float = 0.001
) -> float | None:
    """Poll every path until each holds exactly `data`; return seconds from `t_start` (a
    time.perf_counter() value) to the moment the last one matched, or None at `bound_s`.

    Cheap per poll: a stat, and the content is read only once the size matches (relaysync and
    rsync both rename complete files into place, so a matching size is almost always final).
    """
    pending = list(paths)
    size = len(data)
    deadline = t_start + bound_s
    last = t_start
    for _ in range(int(bound_s / poll_s) * 4 + 1000):
        still = []
        for p in pending:
            try:
                if os.stat(p).st_size == size:
                    with open(p, "rb") as fh:
                        if fh.read() == data:
                            last = time.perf_counter()
                            continue
            except FileNotFoundError:
                pass
            still.append(p)
        pending = still
        if not pending:
            return last - t_start
        if time.perf_counter() >= deadline:
            return None
        time.sleep(poll_s)
    return None


def proc_wchar(pid: int) -> int | None:
    """`wchar` of /proc/PID/io: bytes the process passed to write(2)/send(2) and friends (sockets,
    files, pipes alike; counted at the syscall, before the page cache or the wire)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


_PROM_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)"
)


def prometheus_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample `name{labels...}` in Prometheus exposition text, or None."""
    for line in text.splitlines():
        m = _PROM_LINE.match(line)
        if m is None or m["name"] != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m["value"])
    return None


_SS_PID = re.compile(r"\bpid=(\d+),")


def ss_bytes_sent_by_pid(pid: int, peer_ports: set[int]) -> dict[tuple[str, str], int]:
    """Kernel `bytes_sent` of `pid`'s established TCP sockets to any of `peer_ports` (`ss -tinpH`).

    Key: (local address, peer address); the counter is cumulative for the socket's lifetime
    (TCP payload: TLS records included, TCP/IP headers not; retransmissions included).
    """
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established"], capture_output=True, text=True, timeout=10
    ).stdout
    found: dict[tuple[str, str], int] = {}
    current: tuple[str, str] | None = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            current = None
            addrs = [p for p in line.split() if ":" in p and not p.startswith("users:")]
            pids = {int(x) for x in _SS_PID.findall(line)}
            if len(addrs) >= 2 and pid in pids and int(addrs[1].rsplit(":", 1)[1]) in peer_ports:
                current = (addrs[0], addrs[1])
                found[current] = 0
        if current is not None:
            m = re.search(r"\bbytes_sent:(\d+)", line)
            if m:
                found[current] = int(m.group(1))
    return found
