"""The demo's cache: Varnish in front of an origin web server serving target-1, as a site."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from relaysync.cli._shown import cell
from relaysync.testing.caches import Cache, Origin
from relaysync.testing.cluster import Cluster


@dataclass
class DemoCache:
    origin: Origin
    cache: Cache
    site: str
    shown: int = 0  # the newest purge log id printed
    seen: set[int] = field(default_factory=set)

    def show(self, cluster: Cluster, console: Console) -> None:
        """Print every purge outcome newer than the last one shown."""
        r = cluster.api.get("/api/purges", params={"site": self.site, "limit": 100})
        if r.status_code != 200:
            return
        for row in reversed(r.json()):
            if row["id"] <= self.shown:
                continue
            self.shown = row["id"]
            how = "confirmed" if row["confirmed"] else "not confirmed"
            verb = {
                "refreshed": "refreshed",
                "purged": "purged",
                "not_cached": "purged (was not cached)",
                "banned": "banned",
            }.get(row["status"], row["status"])
            console.print(
                f"{cell(verb)} {cell(row['url'])} in {cell(row['cache'])} "
                f"({how}, {row['duration_ms']:.0f} ms)",
                highlight=False,
            )

    def stop(self) -> None:
        self.cache.stop()
        self.origin.stop()


def start_demo_cache(cluster: Cluster, dir: Path, console: Console) -> DemoCache | None:
    """Start Varnish in front of DIR/target-1 and make it a site; None without varnishd."""
    if shutil.which("varnishd") is None:
        console.print(
            "varnishd not found (scripts/install demo installs it): no cache in this demo"
        )
        return None
    state = dir / ".relaysync" / "varnish"
    origin = Origin(dir / "target-1").start()
    try:
        cache = Cache("varnish", state, origin.port).start()
    except BaseException:  # Ctrl-C while Varnish starts included
        origin.stop()
        raise
    demo_cache = DemoCache(origin, cache, "demo")
    try:  # until the caller holds it, Ctrl-C here must not leave Varnish behind
        host = f"127.0.0.1:{cache.port}"
        r = cluster.api.post(
            "/api/sites",
            json={
                "name": "demo",
                "provider": "demo",
                "mapping": "demo",
                "base_urls": [f"http://{host}"],
                "listings": True,  # the origin (http.server) lists directories
                "caches": [{"name": "varnish", "driver": "varnish", "address": cache.address}],
                "origins": [{"server": "target-1", "url": origin.url}],
            },
        )
        if r.status_code != 201:
            raise RuntimeError(f"create demo site: {r.status_code} {r.text}")
        console.print(
            f"Varnish serves target-1 at http://{host}/ (origin {origin.url})", highlight=False
        )
    except BaseException:
        demo_cache.stop()
        raise
    return demo_cache
