"""`relaysync demo`: a master and 1 + N agents on loopback, replicating DIR/source to the targets.

Two shapes: `--targets N` (target-1..N, one flat group, as before) or `--topology R:G:S`
(R regions x G groups per region x S servers per group, agents r{i}g{j}s{k} in region r{i} and
group r{i}g{j}; the source in its own region "origin"), whose relay plan is printed as a tree.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.tree import Tree

from relaysync.cli._shown import cell
from relaysync.errors import ConfigError

if TYPE_CHECKING:  # imported by `demo` alone: every other command, agent and master starts without
    from relaysync.cli._demo_cache import DemoCache
    from relaysync.testing.cluster import Cluster

console = Console()

MAX_DEMO_SERVERS = 64  # target agents in one demo: each is a Python process on this machine
DEFAULT_TARGETS = 2
SOURCE = "source"
SOURCE_REGION = "origin"  # the source's own region and group, so every target region is remote
PLAN_TIMEOUT_S = 30.0  # the master plans within a tick of the last agent joining
PLAN_POLL_S = 0.2


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


@dataclass(frozen=True)
class DemoTarget:
    """One target agent of the demo: its server name, region and group."""

    name: str
    region: str
    group: str


@dataclass(frozen=True)
class Topology:
    """Regions x groups per region x servers per group, as `--topology R:G:S` gives it."""

    regions: int
    groups: int
    servers: int

    @property
    def total(self) -> int:
        return self.regions * self.groups * self.servers

    def targets(self) -> list[DemoTarget]:
        """r{i}g{j}s{k} (1-based) in region r{i}, group r{i}g{j}, regions first, then groups."""
        out = []
        for i in range(1, self.regions + 1):
            for j in range(1, self.groups + 1):
                group = f"r{i}g{j}"
                out += [
                    DemoTarget(f"{group}s{k}", f"r{i}", group) for k in range(1, self.servers + 1)
                ]
        return out


def parse_topology(spec: str) -> Topology:
    """Parse `R:G:S` (regions, groups per region, servers per group).

    Raises:
        ConfigError: not three positive integers, or more than MAX_DEMO_SERVERS servers in all.
    """
    parts = spec.strip().split(":")
    if len(parts) != 3:
        raise ConfigError(f"--topology {spec!r}: expected R:G:S, e.g. 2:2:2")
    values = []
    for what, text in zip(
        ("regions", "groups per region", "servers per group"), parts, strict=True
    ):
        if not text.strip().isdigit() or int(text) < 1:
            raise ConfigError(
                f"--topology {spec!r}: {what} must be a positive integer, not {text!r}"
            )
        values.append(int(text))
    topology = Topology(*values)
    if topology.total > MAX_DEMO_SERVERS:
        raise ConfigError(
            f"--topology {spec!r}: {topology.total} servers, at most {MAX_DEMO_SERVERS}"
        )
    return topology


def demo_targets(
    targets: int | None, topology: str | None
) -> tuple[list[DemoTarget], Topology | None]:
    """The target agents to start, from `--targets` or `--topology` (at most one of them).

    Raises:
        ConfigError: both given, or a bad topology.
    """
    if targets is not None and topology is not None:
        raise ConfigError("--targets and --topology are mutually exclusive: give one")
    if topology is not None:
        parsed = parse_topology(topology)
        return parsed.targets(), parsed
    count = DEFAULT_TARGETS if targets is None else targets
    return [DemoTarget(f"target-{i}", "default", "default") for i in range(1, count + 1)], None


def demo(
    dir: Annotated[
        Path,
        typer.Option(
            "--dir", help="Folder for source/, the targets' folders and the processes' state."
        ),
    ],
    targets: Annotated[
        int | None,
        typer.Option(
            "--targets",
            min=1,
            max=MAX_DEMO_SERVERS,
            help=f"Number of target agents, in one group (default {DEFAULT_TARGETS}).",
        ),
    ] = None,
    topology: Annotated[
        str | None,
        typer.Option(
            "--topology",
            metavar="R:G:S",
            help="Regions, groups per region, servers per group (e.g. 2:2:2): agents r{i}g{j}s{k}; "
            "prints the relay plan.",
        ),
    ] = None,
) -> None:
    """Start a master and 1 + N agents on loopback and replicate DIR/source to every target."""
    try:
        members, shape = demo_targets(targets, topology)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc.args[0]) if exc.args else str(exc)) from exc
    dir = dir.resolve()
    dir.mkdir(parents=True, exist_ok=True)
    _lock = _lock_dir(dir)  # held until this process exits
    state = dir / ".relaysync"
    # Each run starts a fresh fleet (master, agents, mapping); source/ and the targets' folders
    # stay, and the new mapping's first sync brings the targets in step with the source again.
    shutil.rmtree(state, ignore_errors=True)
    from relaysync.cli._demo_cache import start_demo_cache
    from relaysync.testing.cluster import Cluster

    cluster = Cluster(state)
    cache: DemoCache | None = None
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        mapping_id = _start_fleet(cluster, dir, members, shape)
        console.print(f"relaysync demo ready: master {cluster.api_url}", highlight=False)
        where = f"{dir}/target-1..{len(members)}" if shape is None else f"{dir}/r*g*s*"
        console.print(
            f"write files under {dir / SOURCE}; they appear in {where}. Ctrl-C stops.",
            highlight=False,
        )
        if shape is None:
            cache = start_demo_cache(cluster, dir, console)  # it serves target-1
        else:
            _show_plan(cluster, mapping_id, members)
        _follow(cluster, mapping_id, cache)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        console.print("stopping...")
        if cache is not None:
            cache.stop()
        cluster.stop()


def _lock_dir(dir: Path) -> int:
    """Lock DIR for this demo, or stop with what to do when another demo runs there."""
    fd = os.open(dir / ".relaysync.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        console.print(
            f"[red]another relaysync demo is running in {dir}[/red]: stop it (Ctrl-C) "
            "or give this one another --dir"
        )
        raise typer.Exit(2) from None
    return fd


def _start_fleet(
    cluster: Cluster, dir: Path, members: Sequence[DemoTarget], shape: Topology | None
) -> int:
    """Start the master, the source and the targets; create the mapping; return its id."""
    place = "default" if shape is None else SOURCE_REGION
    with console.status("starting master and agents...") as status:
        cluster.start_master()
        status.update(f"starting agent {SOURCE}...")
        cluster.start_agent(SOURCE, region=place, group=place, wait=False)
        for t in members:
            status.update(f"starting agent {t.name}...")
            cluster.start_agent(t.name, region=t.region, group=t.group, wait=False)
        for name in [SOURCE, *(t.name for t in members)]:
            status.update(f"waiting for agent {name}...")
            cluster.wait_agent_up(name)
        (dir / SOURCE).mkdir(exist_ok=True)
        mapping = cluster.create_mapping(
            "demo", SOURCE, dir / SOURCE, [(t.name, dir / t.name) for t in members]
        )
    return int(mapping["id"])


def _show_plan(cluster: Cluster, mapping_id: int, members: Sequence[DemoTarget]) -> None:
    """Wait (bounded) until the master's plan places every target, then print it as a tree."""
    wanted = {t.name for t in members}
    deadline = time.monotonic() + PLAN_TIMEOUT_S
    routes: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        r = cluster.api.get(f"/api/mappings/{mapping_id}/routes")
        if r.status_code == 404 and "mapping" not in r.text.lower():
            console.print("this master does not serve /api/mappings/{id}/routes: no plan to show")
            return
        if r.status_code == 200:
            routes = r.json()
            if plan_complete(routes, wanted):
                break
        time.sleep(PLAN_POLL_S)
    if routes is None:
        console.print(f"the master did not answer with a plan within {PLAN_TIMEOUT_S:.0f} s")
        return
    if not plan_complete(routes, wanted):
        console.print(
            f"[yellow]the plan did not place every target within {PLAN_TIMEOUT_S:.0f} s; "
            f"as it stands:[/yellow]"
        )
    console.print(plan_tree(routes, {t.name: t for t in members}))


def plan_complete(routes: dict[str, Any], wanted: set[str]) -> bool:
    """Every wanted target is a child of some hop or listed as unreachable (a star has no hops)."""
    placed = {h["child"] for h in routes.get("hops", [])} | set(routes.get("unreachable", []))
    return wanted <= placed


def plan_tree(routes: dict[str, Any], members: dict[str, DemoTarget]) -> Tree:
    """A rich tree of GET /api/mappings/{id}/routes: who sends to whom, with each hop's level.

    No hops means a star from the source (the master's convention); unreachable targets are
    listed under the root.
    """
    source = str(routes.get("source") or SOURCE)
    hops = list(routes.get("hops", []))
    if not hops:
        hops = [{"parent": source, "child": n, "level": "direct"} for n in members]
    children: dict[str, list[dict[str, Any]]] = {}
    for hop in hops:
        children.setdefault(hop["parent"], []).append(hop)
    root = Tree(
        f"[bold]{cell(source)}[/bold] (source, region {SOURCE_REGION}) · "
        f"{cell(routes.get('mode', '?'))} routing, "
        f"{len(hops)} hops"
    )
    stack: list[tuple[Tree, str, int]] = [(root, source, 0)]
    seen = {source}
    while stack:  # bounded: each node is expanded once
        branch, parent, depth = stack.pop()
        for hop in children.get(parent, []):
            child = hop["child"]
            if child in seen:
                continue
            seen.add(child)
            t = members.get(child)
            where = f"{t.region}/{t.group}" if t is not None else "?"
            node = branch.add(
                f"{cell(child)} [dim]{cell(where)} · {cell(hop.get('level', '?'))} · "
                f"level {depth + 1}[/dim]"
            )
            stack.append((node, child, depth + 1))
    for name in routes.get("unreachable", []):
        root.add(f"[red]{cell(name)} unreachable[/red]")
    return root


def _follow(cluster: Cluster, mapping_id: int, cache: DemoCache | None = None) -> None:
    """Print every change as its targets commit it, and every cache refresh."""
    shown: dict[int, int] = {}
    while True:
        time.sleep(0.2)
        if cache is not None:
            cache.show(cluster, console)
        r = cluster.api.get("/api/jobs", params={"mapping": mapping_id, "limit": 50})
        if r.status_code != 200:
            continue
        for row in reversed(r.json()):
            seq, done = int(row["seq"]), int(row.get("committed_targets", 0))
            if shown.get(seq) == done:
                continue
            shown[seq] = done
            console.print(
                f"seq {seq:>6} {cell(row['op']):<7} {cell(row['path'])}  "
                f"committed on {done} target(s)",
                highlight=False,
            )
