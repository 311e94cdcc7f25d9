"""Link policies per network section or server pair.

Revision ID: 0004_policies
Revises: 0001
Create Date: 2026-11-23 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_policies"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "link_policies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("target_node", sa.String(length=64), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("transfer", sa.String(length=8), nullable=False),
        sa.Column("zstd_level", sa.Integer(), nullable=False),
        sa.Column("bandwidth_limit_mbit", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("note", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope", "source_node", "target_node", name="uq_link_policy"),
    )


def downgrade() -> None:
    op.drop_table("link_policies")
