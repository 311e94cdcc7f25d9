"""The relay tests' grid and helpers: a source in its own region and 2 regions x 2 groups x
2 servers, its routes and the job log's record of them (conftest.py starts one per module)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaysync.constants import RECONNECT_MAX_S
from relaysync.testing.cluster import wait_until
from tests.integration.conftest import Fleet

GRID = {
    "a1": ("r1", "r1g1"),
    "a2": ("r1", "r1g1"),
    "b1": ("r1", "r1g2"),
    "b2": ("r1", "r1g2"),
    "c1": ("r2", "r2g1"),
    "c2": ("r2", "r2g1"),
    "d1": ("r2", "r2g2"),
    "d2": ("r2", "r2g2"),
}
TARGETS = tuple(GRID)
ROUTE_TIMEOUT_S = 60.0
FAIL_AFTER_S = 2.0
# The outage of test_replication_goes_on_while_the_master_is_down. The agents' one timer that
# runs on while the master is away is their reconnect backoff (0.2 s doubling): its waits reach
# the ceiling, RECONNECT_MAX_S, about 13 s in, and a full ceiling's wait has failed by 30 s. (It
# was 60 s, which no timer of an agent without its master needs: 30 s more of the suite's
# longest test.)
MASTER_DOWN_S = 3 * RECONNECT_MAX_S


def _restart(fleet: Fleet, name: str, env: dict[str, str] | None = None) -> None:
    agent = fleet.cluster.agents[name]
    if agent.process.alive():
        agent.process.stop()
    region, group = GRID.get(name, ("origin", "origin"))
    fleet.cluster.start_agent(name, region=region, group=group, env=env)


def _routes(fleet: Fleet, mapping_id: int) -> dict[str, Any]:
    r = fleet.cluster.api.get(f"/api/mappings/{mapping_id}/routes")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _parents(routes: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {h["child"]: (h["parent"], h["level"]) for h in routes["hops"]}


def _wait_plan(fleet: Fleet, mapping_id: int, check: Any, what: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def planned() -> bool:
        found.update(_routes(fleet, mapping_id))
        return bool(check(_parents(found)))

    try:
        wait_until(planned, timeout_s=ROUTE_TIMEOUT_S, interval_s=0.1, what=what)
    except Exception:
        print("routes:", found)
        print("servers:", fleet.cluster.api.get("/api/servers").json())
        raise
    return found


def _latest_route(fleet: Fleet, mapping_id: int, target: str) -> str:
    r = fleet.cluster.api.get(
        "/api/advances", params={"mapping": str(mapping_id), "target": target, "limit": 1}
    )
    assert r.status_code == 200, r.text
    rows = r.json()
    return str(rows[0]["route"]) if rows else ""


def _wait_route(fleet: Fleet, mapping_id: int, target: str, want: str) -> None:
    try:
        wait_until(
            lambda: _latest_route(fleet, mapping_id, target) == want,
            timeout_s=ROUTE_TIMEOUT_S,
            interval_s=0.1,
            what=f"{target} served along {want}",
        )
    except Exception:
        r = fleet.cluster.api.get("/api/advances", params={"mapping": str(mapping_id), "limit": 50})
        print("advances:", r.json())
        print("routes:", _routes(fleet, mapping_id))
        raise


# the mappings of the running test, removed after it (conftest.py _drop_mappings)
_created: list[int] = []


def _mapping(
    fleet: Fleet, targets: tuple[str, ...] = TARGETS, **routing: Any
) -> tuple[int, Path, list[Path]]:
    mapping, src, dsts = fleet.new_mapping(targets=targets)
    mapping_id = int(mapping["id"])
    _created.append(mapping_id)
    if routing:
        r = fleet.cluster.api.put(f"/api/mappings/{mapping_id}/routing", json=routing)
        assert r.status_code == 200, r.text
    return mapping_id, src, dsts


@dataclass(frozen=True)
class _RelayPair:
    """A mapping to a1 and a2, one of which relays to the other."""

    mapping_id: int
    src: Path
    dsts: list[Path]  # a1's folder, then a2's
    relay: str
    child: str

    def dst(self, name: str) -> Path:
        return self.dsts[("a1", "a2").index(name)]


@contextmanager
def _slow_relay_pair(fleet: Fleet) -> Iterator[_RelayPair]:
    """A mapping to a1 and a2 once planned, the link from the source to the relay capped at
    40 Mbit/s (a pair policy, removed on exit) and in force (a first file converged): a large
    file takes seconds to reach the relay."""
    mapping_id, src, dsts = _mapping(fleet, targets=("a1", "a2"))
    parents = _parents(_wait_plan(fleet, mapping_id, lambda p: len(p) == 2, "a plan"))
    relay, child = ("a1", "a2") if parents["a2"][0] == "a1" else ("a2", "a1")
    r = fleet.cluster.api.put(
        "/api/policies",
        json={"scope": "pair", "source": "src", "target": relay, "bandwidth_limit_mbit": 40},
    )
    assert r.status_code in (200, 201), r.text
    try:
        (src / "warm.txt").write_text("policy in force")
        fleet.wait_converged(src, dsts)
        yield _RelayPair(mapping_id, src, dsts, relay, child)
    finally:
        fleet.cluster.api.delete(f"/api/policies/{r.json()['id']}")


class _NoPartials:
    """Samples target folders in the background: a file under its final name is always whole."""

    def __init__(self, dsts: list[Path], name: str, size: int) -> None:
        self.dsts, self.name, self.size = dsts, name, size
        self.bad: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            for d in self.dsts:
                try:
                    size = (d / self.name).stat().st_size
                except FileNotFoundError:
                    continue
                if size != self.size:
                    self.bad.append(f"{d.name}/{self.name}: {size} bytes")
            self._stop.wait(0.02)

    def __enter__(self) -> _NoPartials:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
