"""server_certificates: when each node's certificate expires, as its last control link showed.

A node's id is its certificate's hash, so a certificate cannot be renewed in place: operators need
to see, fleet-wide, which servers must join again soon (GET /api/servers, `relaysync status`).
No row until the node's control link comes up with this release. A table of its own, not a
column of `servers`: a server's topology and its certificate change apart.

Revision ID: 0016_server_cert_dates
Revises: 0015_api_token_ids
Create Date: 2026-12-05 11:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_server_cert_dates"
down_revision: str | None = "0015_api_token_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "server_certificates",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("not_after", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["servers.node_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_id"),
    )


def downgrade() -> None:
    op.drop_table("server_certificates")
