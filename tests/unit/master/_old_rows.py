"""Rows written straight into a job log at an older schema revision (migration tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from relaysync.master.store._engine import make_engine
from tests.unit.master.test_store_ids import _migrate_to


@contextmanager
def job_log_at(store_url: str, revision: str, node: str) -> Iterator[sa.Engine]:
    """The database at `store_url` migrated to `revision`, holding server `node` and its mapping 1
    (add_source_and_mapping); an engine on it, disposed on exit."""
    _migrate_to(store_url, revision)
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            add_source_and_mapping(conn, node)
        yield engine
    finally:
        engine.dispose()


def add_source_and_mapping(conn: sa.Connection, node: str) -> None:
    """Server `node` ("src") and mapping 1 ("m") of which it is the source."""
    conn.execute(
        sa.text(
            "INSERT INTO servers (node_id, name, region, group_name, address, state,"
            " capacity_weight, created_at) VALUES (:n, 'src', '', '', 'src:1', 'up', 1, 0)"
        ),
        {"n": node},
    )
    conn.execute(
        sa.text(
            "INSERT INTO mappings (id, name, source_node, source_path, include, exclude,"
            " durability, enabled, created_at, updated_at)"
            " VALUES (1, 'm', :n, '/a', '[]', '[]', 'fsync', true, 0, 0)"
        ),
        {"n": node},
    )
