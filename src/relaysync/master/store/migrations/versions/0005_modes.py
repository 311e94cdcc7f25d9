"""Transmission modes per mapping: real-time, manual, reserved; release counters; schedules.

Revision ID: 0005_modes
Revises: 0001
Create Date: 2026-11-23 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_modes"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mapping_modes",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("schedule", sa.String(length=255), nullable=False),
        sa.Column("release", sa.Integer(), nullable=False),
        sa.Column("released_upto", sa.BigInteger(), nullable=False),
        sa.Column("delete_confirm", sa.Integer(), nullable=False),
        sa.Column("keep_versions", sa.Integer(), nullable=False),
        sa.Column("keep_versions_on", sa.JSON(), nullable=False),
        sa.Column("next_run_at", sa.Float(), nullable=True),
        sa.Column("last_run_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id"),
    )


def downgrade() -> None:
    op.drop_table("mapping_modes")
