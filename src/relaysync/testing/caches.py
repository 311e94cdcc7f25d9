"""Real HTTP caches on loopback for tests, the demo and benchmarks: Varnish, nginx with the
cache-purge module and Squid (Debian's packages), each in a temp dir in front of an origin,
plus a tiny origin web server (testing/origin.py) that serves a folder the way nginx does.

Each cache allows PURGE (and its one-request refresh) from 127.0.0.1 only, and caches every
answer, 404s included, for an hour, so that only a purge makes it serve new bytes.
Processes are started in their own session and stopped by pid only.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from relaysync.testing.origin import DELAY_HEADER as DELAY_HEADER
from relaysync.testing.origin import Origin as Origin

START_TIMEOUT_S = 20.0  # Varnish compiles its VCL with gcc first
STOP_TIMEOUT_S = 10.0
CACHE_KINDS = ("varnish", "nginx", "squid")

VARNISH_VCL = """vcl 4.1;
import purge;
import std;

backend origin { .host = "127.0.0.1"; .port = "@ORIGIN@"; }
acl purgers { "127.0.0.1"; }

sub vcl_recv {
    if (req.method == "PURGE" || req.method == "BAN" || req.method == "REFRESH") {
        if (client.ip !~ purgers) { return (synth(405, "Not allowed")); }
    }
    if (req.method == "PURGE") { return (hash); }
    if (req.method == "BAN") {
        if (std.ban("obj.http.x-host == " + req.http.host + " && obj.http.x-url ~ ^"
                    + regsuball(req.url, "([.?*+()\\[\\]{}|^$\\\\])", "\\\\\\1"))) {
            return (synth(200, "Ban added"));
        }
        return (synth(400, std.ban_error()));
    }
    if (req.method == "REFRESH") {
        set req.method = "GET";
        set req.hash_always_miss = true;
    }
}

sub vcl_hit {
    if (req.method == "PURGE") {
        set req.http.n-gone = purge.hard();
        return (synth(200, "Purged " + req.http.n-gone));
    }
}

sub vcl_miss {
    if (req.method == "PURGE") {
        set req.http.n-gone = purge.hard();
        if (std.integer(req.http.n-gone, 0) == 0) { return (synth(404, "Not in cache")); }
        return (synth(200, "Purged " + req.http.n-gone));
    }
}

sub vcl_backend_response {
    set beresp.http.x-url = bereq.url;
    set beresp.http.x-host = bereq.http.host;
    set beresp.ttl = 1h;
    set beresp.grace = 0s;
}

sub vcl_deliver {
    unset resp.http.x-url;
    unset resp.http.x-host;
    if (obj.hits > 0) { set resp.http.X-Cache = "HIT"; } else { set resp.http.X-Cache = "MISS"; }
}
"""

NGINX_CONF = """load_module /usr/lib/nginx/modules/ngx_http_cache_purge_module.so;
daemon off;
master_process on;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    proxy_cache_path cache levels=1:2 keys_zone=zone1:10m max_size=100m inactive=1h use_temp_path=off;
    geo $purger { default 0; 127.0.0.1/32 1; }
    map "$purger:$http_x_refresh" $refresh_ok { default 0; "1:1" 1; }
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            proxy_pass http://127.0.0.1:@ORIGIN@;
            proxy_http_version 1.1;
            proxy_cache zone1;
            proxy_cache_key $uri$is_args$args;
            proxy_cache_valid 200 301 302 404 1h;
            proxy_cache_bypass $refresh_ok;
            add_header X-Cache-Status $upstream_cache_status always;
            # the module's "same location" syntax crashes Debian's worker: a named location
            error_page 418 = @purge;
            if ($request_method = PURGE) { return 418; }
        }
        location @purge {
            allow 127.0.0.1;
            deny all;
            proxy_cache_purge zone1 $uri$is_args$args;
        }
    }
}
"""

SQUID_CONF = """http_port 127.0.0.1:@PORT@ accel defaultsite=127.0.0.1:@ORIGIN@ no-vhost
cache_peer 127.0.0.1 parent @ORIGIN@ 0 no-query no-digest originserver name=origin
visible_hostname squid-test
icp_port 0
htcp_port 0
acl purge method PURGE
acl purgers src 127.0.0.1/32
http_access allow purge purgers
http_access deny purge
acl origin_site dstdomain 127.0.0.1
http_access allow origin_site
http_access deny all
cache_peer_access origin allow origin_site
cache_peer_access origin deny all
cache_mem 64 MB
maximum_object_size_in_memory 1 MB
negative_ttl 1 hour
refresh_pattern . 60 20% 1440 override-lastmod
pid_filename @DIR@/squid.pid
cache_log @DIR@/cache.log
access_log none
cache_store_log none
coredump_dir @DIR@
netdb_filename none
pinger_enable off
cache_effective_user proxy
shutdown_lifetime 0 seconds
"""


class CacheStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(
    port: int,
    path: str = "/",
    *,
    host: str = "",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout_s: float = 15.0,  # generous: a loaded CI machine runs three test workers
) -> tuple[int, bytes, dict[str, str]]:
    """One request to 127.0.0.1:port; returns (status, body, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        sent = {"Host": host or f"127.0.0.1:{port}", **(headers or {})}
        conn.request(method, path, headers=sent)
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(name))
    return members


@dataclass
class Cache:
    """One real cache process in `dir`, on 127.0.0.1:`port`, in front of `origin_port`."""

    kind: str
    dir: Path
    origin_port: int
    port: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    conf: str = ""  # a configuration template (@PORT@, @ORIGIN@, @DIR@) instead of the kind's

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Cache:
        if self.kind not in CACHE_KINDS:
            raise ValueError(f"unknown cache kind {self.kind!r}")
        self.port = self.port or free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)  # Varnish and Squid drop root and must traverse it
        argv = getattr(self, f"_prepare_{self.kind}")()
        log = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        self.popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir
        )
        log.close()
        try:
            self._wait_http()
        except BaseException:  # not up, or interrupted (Ctrl-C in the demo): never leave it running
            self.stop()
            raise
        return self

    def _fill(self, template: str) -> str:
        return (
            template.replace("@PORT@", str(self.port))
            .replace("@ORIGIN@", str(self.origin_port))
            .replace("@DIR@", str(self.dir))
        )

    def _prepare_varnish(self) -> list[str]:
        (self.dir / "varnish.vcl").write_text(self._fill(self.conf or VARNISH_VCL))
        work = self.dir / "wd"
        shutil.rmtree(work, ignore_errors=True)
        return [
            "varnishd",
            "-F",
            "-a",
            f"127.0.0.1:{self.port}",
            "-T",
            "none",
            "-f",
            str(self.dir / "varnish.vcl"),
            "-n",
            str(work),
            "-s",
            "malloc,64m",
            "-p",
            "default_grace=0",
        ]

    def _prepare_nginx(self) -> list[str]:
        for sub in ("logs", "tmp", "cache"):
            (self.dir / sub).mkdir(exist_ok=True)
            os.chmod(self.dir / sub, 0o777)  # the worker runs as nobody when started as root
        (self.dir / "nginx.conf").write_text(self._fill(self.conf or NGINX_CONF))
        return [
            "nginx",
            "-p",
            f"{self.dir}/",
            "-c",
            str(self.dir / "nginx.conf"),
            "-e",
            str(self.dir / "logs" / "error.log"),
        ]

    def _prepare_squid(self) -> list[str]:
        (self.dir / "squid.conf").write_text(self._fill(self.conf or SQUID_CONF))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "proxy", "proxy")
        return ["squid", "-N", "-f", str(self.dir / "squid.conf")]

    def _wait_http(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise CacheStartError(f"{self.kind} exited: {self.log_tail()}")
            try:
                http_get(self.port, "/", timeout_s=0.5)
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise CacheStartError(f"{self.kind} did not answer on port {self.port}: {self.log_tail()}")

    def reload(self, conf: str) -> None:
        """Rewrite an nginx's configuration from template `conf` and make it reload (SIGHUP to
        its master: the workers change, the disk cache stays)."""
        if self.kind != "nginx" or self.popen is None:
            raise ValueError("only a running nginx reloads its configuration")
        self.conf = conf
        (self.dir / "nginx.conf").write_text(self._fill(conf))
        os.kill(self.popen.pid, signal.SIGHUP)

    def log_tail(self) -> str:
        texts = []
        for name in ("stdout.log", "cache.log", "logs/error.log"):
            p = self.dir / name
            if p.exists():
                texts.append(p.read_text(errors="replace")[-2000:])
        return "\n".join(texts)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)  # its own session: the manager and its children
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_TIMEOUT_S)
        self._wait_group_gone(self.popen.pid)
        self._wait_port_free()

    @staticmethod
    def _wait_group_gone(pgid: int) -> None:
        """The manager may exit before its workers (Varnish's cache child, Squid's kids): wait
        until none of its process group is left, killing the rest after STOP_TIMEOUT_S."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        killed = False
        while _group_members(pgid):
            if time.monotonic() >= deadline:
                if killed:
                    raise RuntimeError(
                        f"cache process group {pgid} still running after SIGKILL: "
                        f"pids {_group_members(pgid)}"
                    )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + STOP_TIMEOUT_S
            time.sleep(0.02)

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                http_get(self.port, "/", timeout_s=0.2)
            except OSError:
                return
            time.sleep(0.05)


def cache_base_dir() -> Path:
    """A temp dir that the caches' unprivileged users can traverse (mkdtemp makes 0700)."""
    base = Path(tempfile.mkdtemp(prefix="relaysync-caches-"))
    os.chmod(base, 0o755)
    return base


@dataclass
class CacheFarm:
    """One origin serving `docroot` and one cache of each kind in front of it."""

    base: Path
    origin: Origin
    caches: dict[str, Cache]

    @property
    def docroot(self) -> Path:
        return self.origin.root

    def stop(self) -> None:
        for cache in self.caches.values():
            cache.stop()
        self.origin.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def start_cache_farm(kinds: tuple[str, ...] = CACHE_KINDS) -> CacheFarm:
    """Start an origin and the caches named in `kinds`, each in its own dir under one base."""
    base = cache_base_dir()
    docroot = base / "docroot"
    docroot.mkdir()
    os.chmod(docroot, 0o755)
    origin = Origin(docroot).start()
    farm = CacheFarm(base, origin, {})
    try:
        for kind in kinds:
            farm.caches[kind] = Cache(kind, base / kind, origin.port).start()
    except BaseException:
        farm.stop()
        raise
    return farm
