"""`relaysync demo`: a master and 1 + N agents on loopback, replicating DIR/source to DIR/target-*."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from relaysync.cli._demo_cache import DemoCache, start_demo_cache
from relaysync.testing.cluster import Cluster

console = Console()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def demo(
    dir: Annotated[Path, typer.Option("--dir", help="Folder for source/, target-N/ and the processes' state.")],
    targets: Annotated[int, typer.Option("--targets", min=1, max=64, help="Number of target agents.")] = 2,
) -> None:
    """Start a master and 1 + N agents on loopback and replicate DIR/source to DIR/target-1..N."""
    dir = dir.resolve()
    dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(dir / ".relaysync")
    cache: DemoCache | None = None
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        with console.status("starting master and agents...") as status:
            cluster.start_master()
            names = ["source"] + [f"target-{i}" for i in range(1, targets + 1)]
            for name in names:
                status.update(f"starting agent {name}...")
                cluster.start_agent(name, wait=False)
            for name in names:
                cluster.wait_agent_up(name)
            (dir / "source").mkdir(exist_ok=True)
            mapping = cluster.create_mapping(
                "demo", "source", dir / "source",
                [(f"target-{i}", dir / f"target-{i}") for i in range(1, targets + 1)],
            )
        console.print(f"relaysync demo ready: master {cluster.api_url}", highlight=False)
        console.print(f"write files under {dir / 'source'}; they appear in "
                      f"{dir}/target-1..{targets}. Ctrl-C stops.", highlight=False)
        cache = start_demo_cache(cluster, dir, console)
        _follow(cluster, int(mapping["id"]), cache)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        console.print("stopping...")
        if cache is not None:
            cache.stop()
        cluster.stop()


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
            console.print(f"seq {seq:>6} {row['op']:<7} {row['path']}  committed on {done} target(s)",
                          highlight=False)
