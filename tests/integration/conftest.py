"""A real fleet for integration tests: one master and agents as processes, per test module."""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaysync.testing.cluster import Cluster, wait_until
from tests._trees import snapshot

CONVERGE_TIMEOUT_S = 30.0
_counter = itertools.count(1)


def bytes_sent_to(port: int) -> int:
    """TCP payload bytes sent so far on every established connection to 127.0.0.1:port (TLS included)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(n) for n in re.findall(r"bytes_sent:(\d+)", out))


@dataclass
class Fleet:
    cluster: Cluster
    base: Path

    def new_mapping(
        self, *, targets: tuple[str, ...] = ("t1", "t2"), **extra: object
    ) -> tuple[dict, Path, list[Path]]:
        n = next(_counter)
        src = self.base / f"m{n}" / "source"
        src.mkdir(parents=True)
        dsts = [self.base / f"m{n}" / f"target-{t}" for t in targets]
        mapping = self.cluster.create_mapping(
            f"m{n}", "src", src, [(t, d) for t, d in zip(targets, dsts, strict=True)], **extra
        )
        wait_until(
            lambda: all(d.is_dir() for d in dsts),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="targets opened",
        )
        return mapping, src, dsts

    def peer_port(self, name: str) -> int:
        return int(self.cluster.api.get(f"/api/servers/{name}").json()["address"].rsplit(":", 1)[1])

    def wait_converged(
        self, src: Path, dsts: list[Path], timeout_s: float = CONVERGE_TIMEOUT_S
    ) -> None:
        def same() -> bool:
            want = snapshot(src)
            return all(snapshot(d) == want for d in dsts)

        try:
            wait_until(same, timeout_s=timeout_s, interval_s=0.05, what="targets equal to source")
        except Exception:
            want = snapshot(src)
            for d in dsts:
                got = snapshot(d)
                diff = {
                    k: (want.get(k), got.get(k))
                    for k in set(want) | set(got)
                    if want.get(k) != got.get(k)
                }
                print(f"--- {d}: {len(diff)} differences, e.g. {list(diff.items())[:5]}")
            for agent in self.cluster.agents.values():
                print(f"--- log of {agent.name}\n{agent.process.log_tail(30)}")
            raise


def start_fleet(
    base: Path,
    agents: tuple[str, ...] = ("src", "t1", "t2"),
    extra_env: dict[str, str] | None = None,
) -> Fleet:
    cluster = Cluster(base / "fleet", extra_env=extra_env or {})
    cluster.start_master()
    for name in agents:
        cluster.start_agent(name, wait=False)
    for name in agents:
        cluster.wait_agent_up(name)
    return Fleet(cluster, base)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(tmp_path_factory.mktemp("fleet"))
    try:
        yield f
    finally:
        f.cluster.stop()


@pytest.fixture
def own_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet for one test alone (it stops, kills or reconfigures a process), with the agents
    its module names in OWN_FLEET_AGENTS (default: src, t1, t2)."""
    agents = getattr(request.module, "OWN_FLEET_AGENTS", ("src", "t1", "t2"))
    f = start_fleet(tmp_path, agents=agents)
    try:
        yield f
    finally:
        f.cluster.stop()
