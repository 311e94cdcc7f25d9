"""One grid of real agents per module (_grid.py), and each test's mappings removed after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import Fleet
from tests.integration.relay._grid import GRID, _created


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from relaysync.testing.cluster import Cluster

    base = tmp_path_factory.mktemp("grid")
    cluster = Cluster(base / "fleet")
    cluster.start_master()
    cluster.start_agent("src", region="origin", group="origin", wait=False)
    for name, (region, group) in GRID.items():
        cluster.start_agent(name, region=region, group=group, wait=False)
    for name in ("src", *GRID):
        cluster.wait_agent_up(name)
    try:
        yield Fleet(cluster, base)
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def _drop_mappings(grid: Fleet) -> Iterator[None]:
    """Each test's mappings end with it: the next test's restarts need not reopen them."""
    yield
    while _created:
        grid.cluster.api.delete(f"/api/mappings/{_created.pop()}")
