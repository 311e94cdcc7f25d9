"""A real relaysync fleet on loopback: a master and agents as `python -m relaysync` processes.

Used by the demo and by the integration tests; everything is driven through the REST API.
Processes are started with their own process group and stopped by pid only; each is sent SIGTERM
if the process that started it dies (a test run killed by a timeout, or kill -9, ran no teardown
and left its fleet running for good).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from relaysync._util.ports import stable_free_port
from relaysync.auth.api_trust import fleet_api_context
from relaysync.constants import HTTP_TIMEOUT_S
from relaysync.errors import RelaySyncError

START_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when `parent` dies (strictly: the thread that
    started it ends; a fleet is started from the thread that runs the tests or the demo)."""

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the signal was armed
            os._exit(1)

    return arm


class ClusterError(RelaySyncError):
    """Test fleet: {}"""


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout_s: float,
    interval_s: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll `condition` until it returns a truthy value; raise ClusterError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise ClusterError(
        f"timed out after {timeout_s} s waiting for {what}"
        + (f" (last error: {last_exc})" if last_exc else "")
    )


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    # run through this command (which must exec it, e.g. `setpriv ...`): the pid is the process's
    prefix: Sequence[str] = ()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, env: dict[str, str]) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.popen = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "relaysync", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),  # takes no lock: safe after a fork
        )
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, the way a crash looks."""
        if self.alive():
            assert self.popen is not None
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class Agent:
    name: str
    data_dir: Path
    process: Process
    node_id: str = ""


@dataclass
class Cluster:
    """A master and agents under `base`, all on 127.0.0.1."""

    base: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    master: Process | None = None
    api_url: str = ""
    agents: dict[str, Agent] = field(default_factory=dict)
    # the CA of the master's own API certificate (api_tls = "files"); None: the fleet's CA
    api_ca_file: Path | None = None
    _client: httpx.Client | None = None

    @property
    def master_dir(self) -> Path:
        return self.base / "master"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
        env.update(self.extra_env)
        return env

    def start_master(self, *, database_url: str = "", extra_args: Sequence[str] = ()) -> None:
        self.master_dir.mkdir(parents=True, exist_ok=True)
        state = self.master_dir / "master.json"
        state.unlink(missing_ok=True)
        # Restarted, the master listens on the same API port (the tests hold its URL): one below
        # the ephemeral range, which no outgoing connection can take while it is down (one did,
        # once, and the restart failed with EADDRINUSE). The master keeps its control port so.
        api_port = _port_of(self.api_url) if self.api_url else stable_free_port()
        args = ["master", "--data", str(self.master_dir), "--listen", f"127.0.0.1:{api_port}"]
        if database_url:
            args += ["--database-url", database_url]
        args += extra_args
        self.master = Process("master", args, self.base / "master.log")
        self.master.start(self._env())
        info = wait_until(
            lambda: self._read_state(state), timeout_s=START_TIMEOUT_S, what="master start"
        )
        self.api_url = info["api_url"]
        token = (self.master_dir / "admin-token").read_text().strip()
        self._client = httpx.Client(
            base_url=self.api_url,
            timeout=HTTP_TIMEOUT_S,
            headers={"Authorization": f"Bearer {token}"},
            verify=self.api_verify(),
            # uvicorn closes a connection idle for 5 s: a request sent on one it was closing got
            # "Server disconnected without sending a response" (a CI run's failure)
            limits=httpx.Limits(keepalive_expiry=1.0),
        )

    def api_verify(self) -> ssl.SSLContext | bool:
        """What an https master's certificate is checked with: the fleet's CA (api_tls fleet),
        or api_ca_file (files)."""
        if not self.api_url.startswith("https:"):
            return True
        if self.api_ca_file is not None:
            return ssl.create_default_context(cafile=str(self.api_ca_file))
        return fleet_api_context((self.master_dir / "ca" / "ca.pem").read_bytes())

    def _read_state(self, path: Path) -> dict[str, Any] | None:
        if self.master is not None and not self.master.alive():
            raise ClusterError(f"master exited:\n{self.master.log_tail()}")
        try:
            return dict(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            return None

    @property
    def join_token(self) -> str:
        """The default join string (token.ca-fingerprint) from the master's data dir."""
        return (self.master_dir / "join-token").read_text().strip()

    @property
    def api(self) -> httpx.Client:
        if self._client is None:
            raise ClusterError("master not started")
        return self._client

    def start_agent(
        self,
        name: str,
        *,
        region: str = "default",
        group: str = "default",
        extra_args: Sequence[str] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        token: str | None = None,
    ) -> Agent:
        """Start agent `name` (joined at its first start with `token`, by default the master's
        join string); with `wait`, until the master lists it up."""
        agent = self.agents.get(name)
        if agent is None:
            data = self.base / "agents" / name
            data.mkdir(parents=True, exist_ok=True)
            args = [
                "agent",
                "--master",
                self.api_url,
                "--token",
                self.join_token if token is None else token,
                "--name",
                name,
                "--data",
                str(data),
                "--region",
                region,
                "--group",
                group,
                *extra_args,
            ]
            log = self.base / f"agent-{name}.log"
            agent = Agent(name, data, Process(name, args, log, prefix=prefix))
            self.agents[name] = agent
        agent.process.start(self._env() | (env or {}))
        if wait:
            self.wait_agent_up(name)
        return agent

    def wait_agent_up(self, name: str, timeout_s: float = START_TIMEOUT_S) -> None:
        agent = self.agents[name]

        def up() -> bool:
            if not agent.process.alive():
                raise ClusterError(f"agent {name} exited:\n{agent.process.log_tail()}")
            r = self.api.get(f"/api/servers/{name}")
            if r.status_code == 200 and r.json().get("state") == "up":
                agent.node_id = r.json()["node_id"]
                return True
            return False

        wait_until(up, timeout_s=timeout_s, what=f"agent {name} up")

    def create_mapping(
        self,
        name: str,
        source: str,
        source_path: Path,
        targets: Sequence[tuple[str, Path]],
        **extra: Any,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "source": source,
            "source_path": str(source_path),
            "targets": [{"server": t, "path": str(p)} for t, p in targets],
            **extra,
        }
        r = self.api.post("/api/mappings", json=body)
        if r.status_code not in (200, 201):
            raise ClusterError(f"create mapping: {r.status_code} {r.text}")
        return dict(r.json())

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.process.stop()
        if self.master is not None:
            self.master.stop()
        if self._client is not None:
            self._client.close()


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
