"""The master process: store, CA, REST API (uvicorn), control server and job log writer.

On first start it creates its data directory: the fleet CA, its own control-server
certificate, the SQLite store (unless a database URL is given), an admin API token and a join
token, each in a file readable by root only and made only while its file is absent: a default
join token an operator revoked stays in its file, refused, and every start warns about it.
`master.json` there tells local tools where the API and control ports are, and whether the API
is HTTPS (api_tls.py decides; plain HTTP on an address other hosts reach is refused).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import ssl
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskGroup, TaskStatus

from relaysync._util.addresses import is_unspecified, join_address
from relaysync._util.aio import leaf_error
from relaysync._util.dir_lock import FileLock, lock_data_dir
from relaysync._util.supervise import supervise
from relaysync.auth.ca import CertificateAuthority
from relaysync.auth.tokens import join_string, split_join_string
from relaysync.auth.validity import REPLACE_MASTER_CERT, seconds_left, watch_expiry
from relaysync.config.load import split_address
from relaysync.config.schema import MasterConfig
from relaysync.constants import MASTER_NODE_NAME, TASK_RETRY_MAX_S, TASK_RETRY_MIN_S
from relaysync.errors import CannotListen
from relaysync.master import api_tls, control_port
from relaysync.master.app import create_app
from relaysync.master.control import ControlServer
from relaysync.master.db_lock import DatabaseLock, lock_database
from relaysync.master.events import EventBus, EventType
from relaysync.master.joblog import JobLogWriter
from relaysync.master.purging import PurgeService
from relaysync.master.retention import RetentionPruner
from relaysync.master.router import Router
from relaysync.master.scheduler import Scheduler
from relaysync.master.store.store import Store
from relaysync.monitor.engine import MonitorService
from relaysync.monitor.self_watch import SelfWatch
from relaysync.transfer import tls

logger = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns signals and cancels us."""

    def capture_signals(self) -> Any:
        return nullcontext()


def _secret_file(path: Path, make: Any) -> str:
    if path.exists():
        return path.read_text().strip()
    value = str(make())
    _write_secret(path, value)
    return value


def _write_secret(path: Path, value: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    tmp.replace(path)


def _default_join_token(path: Path, store: Store, ca_fingerprint: str) -> str:
    """The join token in `path`, made (never expiring) only when the file is absent.

    The file holds its join string (token.ca-fingerprint: what agents are given); a file with
    the token alone (written by an older release) gets the fingerprint added, same token.
    A token the store refuses (revoked, or issued by another database) stays in the file and
    invalid, with a warning at every start: recreating it would undo the revocation.
    """
    token, _ = split_join_string(_secret_file(path, store.create_join_token))
    full = join_string(token, ca_fingerprint)
    if path.read_text().strip() != full:
        _write_secret(path, full)
    if not store.check_join_token(token):
        logger.warning(
            "the default join token in %s is revoked (or unknown to this database): agents "
            "cannot join with it; give them one from `relaysync token create-join --ttl-s N`, "
            "or delete the file and restart the master for a new default one that never expires",
            path,
        )
    return token


async def _watch_control_certificate(cert_path: Path) -> None:
    """A warning a month before the control certificate (which agents pin) expires, daily."""
    remedy = REPLACE_MASTER_CERT.format(cert_path.parent)
    await watch_expiry(cert_path, "the master's control server", remedy)


@dataclass
class _Parts:
    events: EventBus
    joblog: JobLogWriter
    purging: PurgeService
    monitor: MonitorService
    router: Router
    control: ControlServer
    control_port: control_port.ControlPort  # where it listens, and why there


async def _start_links(tg: TaskGroup, parts: _Parts, stopping: anyio.Event) -> int:
    """Start the control server and the job log in `tg`; the control port they listen on."""
    try:
        port: int = await tg.start(serve_links_and_joblog, parts.joblog, parts.control, stopping)
    except* CannotListen as refused:  # a remembered port is not the operator's choice
        taken = parts.control_port.taken(leaf_error(refused))
        if taken is None:
            raise
        raise taken from leaf_error(refused)
    return port


async def serve_links_and_joblog(
    joblog: JobLogWriter,
    control: ControlServer,
    stopping: anyio.Event,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """The job log writer and the agents' control links, shielded from the master's cancel:
    once `stopping` is set they stop in order (ControlServer.stop: no more reading, the last
    flush, the last acknowledgements, then the links close), within MASTER_STOP_TIMEOUT_S."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            await tg.start(joblog.serve)
            task_status.started(await tg.start(control.serve))
            await stopping.wait()
            await control.stop(joblog.stop)
            tg.cancel_scope.cancel()


class MasterService:
    def __init__(self, cfg: MasterConfig) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.api_url = ""
        self.control_address = ""
        self.purge_address = ""  # the purge listener, if --purge-listen
        self.ca_fingerprint = ""  # of the fleet CA: what join strings carry
        self.api_tls = api_tls.ApiTls("off")  # how the API is served: decided in _prepare
        self._dir_lock: FileLock | None = None  # held from _prepare until serve ends
        self._db_lock: DatabaseLock | None = None  # likewise: one master per database

    def _prepare(self) -> tuple[Store, CertificateAuthority, tls.Identity, str, str]:
        mode = api_tls.decide_mode(self.cfg)  # a refused plain-HTTP API stops us before anything
        # before anything in it is read or written: another master there stops this one
        self._dir_lock = lock_data_dir(self.data_dir, "master")
        url = self.cfg.database_url or f"sqlite:///{self.data_dir / 'master.db'}"
        # before the CA, the migrations and the API: another master on the database stops us
        self._db_lock = lock_database(url, self.data_dir)
        os.chmod(self.data_dir, 0o700)
        ca = CertificateAuthority.load_or_create(self.data_dir / "ca")
        self.api_tls = api_tls.prepare(self.cfg, mode, ca, self.data_dir)
        identity = tls.Identity.in_directory(self.data_dir / "control")
        if not identity.exists():
            identity.key_path.parent.mkdir(exist_ok=True)
            key_pem, cert_pem = ca.issue(
                MASTER_NODE_NAME, ["127.0.0.1", "localhost", socket.gethostname()]
            )
            identity.key_path.write_bytes(key_pem)
            identity.key_path.chmod(0o600)
            identity.cert_path.write_bytes(cert_pem)
            identity.ca_path.write_bytes(ca.ca_pem)
        store = Store(url)
        store.migrate()
        admin = _secret_file(self.data_dir / "admin-token", lambda: secrets.token_urlsafe(32))
        join = _default_join_token(self.data_dir / "join-token", store, ca.ca_fingerprint)
        self.ca_fingerprint = ca.ca_fingerprint
        # plain (TLS-off) links' secrets derive from this key; stable across restarts
        store.policies.link_key = bytes.fromhex(
            _secret_file(self.data_dir / "link-key", lambda: secrets.token_hex(32))
        )
        return store, ca, identity, admin, join

    async def serve(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; reports the API URL once both servers listen. Cancelled, it
        stops the agents' links and the job log in order (`serve_links_and_joblog`).

        Raises:
            DataDirInUse: another master (or an agent) runs on the data directory.
            DatabaseInUse: another master runs on the database (DatabaseTakenOver: it took
                the database while this master's lock connection was down).
        """
        try:
            await self._serve(task_status)
        finally:
            if self._db_lock is not None:
                self._db_lock.release()
            if self._dir_lock is not None:
                self._dir_lock.release()

    async def _serve(self, task_status: TaskStatus[str]) -> None:
        store, ca, identity, admin_token, _join = await anyio.to_thread.run_sync(self._prepare)
        parts = self._parts(store, identity)
        stopping = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                try:
                    await self._start(tg, parts, store, ca, identity, admin_token, stopping)
                    task_status.started(self.api_url)
                    await anyio.sleep_forever()
                finally:
                    stopping.set()
        finally:
            store.close()

    def _parts(self, store: Store, identity: tls.Identity) -> _Parts:
        events = EventBus()
        # reports past the writer's memory bound wait here while the store is behind
        joblog = JobLogWriter(store, events, spool_dir=self.data_dir / "joblog-spool")
        port = control_port.choose(self.cfg.control_listen, self.data_dir)
        cert = identity.cert_path.read_bytes()
        monitor = self._monitor(store, events, joblog, lambda: set(control.links), cert)
        router = Router(store, events, links_up=lambda: set(control.links))
        control = ControlServer(
            host=port.host,
            port=port.port,
            ctx=tls.server_context(identity),
            store=store,
            events=events,
            joblog=joblog,
            on_metrics=monitor.on_metrics,
            router=router,
        )
        router.on_change = control.notify_change
        purging = PurgeService(
            store=store, events=events, joblog=joblog, listen=self.cfg.purge_listen
        )
        return _Parts(events, joblog, purging, monitor, router, control, port)

    async def _start(
        self,
        tg: TaskGroup,
        parts: _Parts,
        store: Store,
        ca: CertificateAuthority,
        identity: tls.Identity,
        admin_token: str,
        stopping: anyio.Event,
    ) -> None:
        """Start every part in `tg`, the API server last; `stopping` ends the links and job log."""
        control = parts.control
        self.purge_address = await tg.start(parts.purging.serve)
        # a monitor failing after its start (a bug) is restarted with backoff, the master runs on
        await tg.start(
            partial(
                supervise,
                parts.monitor.serve,
                name="monitor",
                min_delay_s=TASK_RETRY_MIN_S,
                max_delay_s=TASK_RETRY_MAX_S,
            )
        )
        # failure state rebuilt from the store before agents connect
        await tg.start(parts.router.serve)
        port = await _start_links(tg, parts, stopping)
        await tg.start(Scheduler(store, parts.events, control.notify_change).serve)
        await tg.start(RetentionPruner(store).serve)  # job-log history past its retention
        tg.start_soon(_watch_control_certificate, identity.cert_path)
        if self._db_lock is not None:  # a dropped lock connection is taken again, or we stop
            tg.start_soon(self._db_lock.watch)
        self.control_address = f"{control.host}:{port}"
        control_port.remember(self.data_dir, port)
        app = create_app(
            store=store,
            ca=ca,
            events=parts.events,
            admin_token=admin_token,
            control_address=self.control_address,
            on_change=control.notify_change,
            router=parts.router,
            master_node_id=identity.node_id,
            source_failures=control.source_failures,
        )
        app.state.joblog = parts.joblog
        app.state.purger = parts.purging.purger
        app.state.monitor = parts.monitor
        await self._serve_api(tg, app)
        self._write_state()
        logger.info("master ready: api %s control %s", self.api_url, self.control_address)

    async def _serve_api(self, tg: TaskGroup, app: Any) -> None:
        sock, self.api_url = self._bind_api()
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            **self.api_tls.uvicorn_options(),
        )
        config.load()
        if config.ssl is not None:
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        server = _Uvicorn(config)
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(30):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no readiness event
                await anyio.sleep(0.01)
        logger.info(
            "API on %s (%s)",
            self.api_url,
            self.api_tls.describe(),
            extra={"api_url": self.api_url, "api_tls": self.api_tls.mode},
        )

    def _monitor(
        self,
        store: Store,
        events: EventBus,
        joblog: JobLogWriter,
        links_up: Callable[[], set[str]],
        cert_pem: bytes,
    ) -> MonitorService:
        watch = SelfWatch(
            store_ping=store.epoch,
            queue_length=lambda: len(joblog._queue),
            spooled_records=lambda: joblog.spooled_records,
            cert_expires_in_s=lambda: seconds_left(cert_pem),
        )
        return MonitorService(
            store=store,
            publish=lambda kind, data: events.publish(EventType(kind), **data),
            links_up=links_up,
            self_figures=watch.collect,
            interval_s=self.cfg.monitor_interval_s,
            heartbeat_grace_s=self.cfg.heartbeat_grace_s,
            raw_retention_s=self.cfg.metrics_raw_retention_s,
            minute_retention_s=self.cfg.metrics_minute_retention_s,
        )

    def _bind_api(self) -> tuple[socket.socket, str]:
        host, port = split_address(self.cfg.listen)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise CannotListen.of(self.cfg.listen, exc, "--listen") from exc
        sock.listen(128)
        sock.set_inheritable(True)
        # on every interface, local tools (master.json) reach it on loopback
        local = ("::1" if ":" in host else "127.0.0.1") if is_unspecified(host) else host
        return sock, f"{self.api_tls.scheme}://{join_address(local, sock.getsockname()[1])}"

    def _write_state(self) -> None:
        state = {
            "api_url": self.api_url,
            "control_address": self.control_address,
            "pid": os.getpid(),
            "purge_address": self.purge_address,
            "ca_fingerprint": self.ca_fingerprint,
            "api_tls": self.api_tls.mode,  # "fleet": local tools check it with data_dir/ca/ca.pem
        }
        tmp = self.data_dir / "master.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.data_dir / "master.json")
