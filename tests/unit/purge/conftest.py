"""The purge planners' tests: a migrated SQLite store holding a source and one origin, both up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.master.store import Store
from relaysync.purge.site import CacheSpec, OriginSpec, SiteSpec

SOURCE, O1 = "a" * 64, "b" * 64  # the node ids of servers src and o1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'master.db'}")
    s.migrate()
    for node, name in ((SOURCE, "src"), (O1, "o1")):
        s.upsert_server(node_id=node, name=name, region="r", group="g", address="127.0.0.1:1")
        s.set_server_state(node, "up", time.time())
    try:
        yield s
    finally:
        s.close()


def one_site(*caches: CacheSpec, origins: tuple[OriginSpec, ...] = ()) -> SiteSpec:
    """Site 1 with `caches` (and `origins`), for tests that build the purger's sites by hand."""
    return SiteSpec(
        id=1,
        name="s",
        provider="p",
        mapping_id=None,
        root="",
        base_urls=("http://h",),
        aliases=(),
        path_prefix="/",
        index_files=(),
        caches=caches,
        origins=origins,
    )
