"""Revoked nodes: servers removed from the fleet, refused by node id from then on.

A node's certificate is valid for 825 days and the CA keeps no revocation list, so removing a
server (DELETE /api/servers/{name}) records its node id here, and the control server refuses
that certificate for good. Servers removed before this revision are simply unknown to the
store, which the control server refuses too (with the same message). The server's name is
free again: a machine re-added under it joins with a new key, hence a new node id.

Revision ID: 0012_revoked_nodes
Revises: 0011_policy_inherit
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_revoked_nodes"
down_revision: str | None = "0011_policy_inherit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revoked_nodes",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
    )


def downgrade() -> None:
    op.drop_table("revoked_nodes")
