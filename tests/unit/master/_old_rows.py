"""Rows written straight into a job log at an older schema revision (migration tests)."""

from __future__ import annotations

import sqlalchemy as sa


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
