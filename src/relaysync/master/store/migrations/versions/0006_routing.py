"""Relay routes: per-mapping routing settings, failed targets, recovery jobs, topology edits, routes in the job log.

Revision ID: 0006_routing
Revises: 0001
Create Date: 2026-11-25 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # sqlite autoincrements INTEGER only

revision: str = "0006_routing"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "servers",
        sa.Column("topology_locked", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "watermark_advances", sa.Column("route", sa.Text(), nullable=False, server_default="")
    )
    op.create_table(
        "mapping_routing",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("hops", sa.JSON(), nullable=False),
        sa.Column("fanout", sa.Integer(), nullable=False),
        sa.Column("recovery_policy", sa.String(length=16), nullable=False),
        sa.Column("recovery_schedule", sa.String(length=255), nullable=False),
        sa.Column("fail_after_s", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id"),
    )
    op.create_table(
        "routing_targets",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("schedule", sa.String(length=255), nullable=False),
        sa.Column("failed_at", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("next_recovery_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id", "node_id"),
    )
    op.create_table(
        "recovery_jobs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("target_node", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("from_seq", sa.BigInteger(), nullable=False),
        sa.Column("goal_seq", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_recovery_jobs_mapping", "recovery_jobs", ["mapping_id", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_recovery_jobs_mapping", table_name="recovery_jobs")
    op.drop_table("recovery_jobs")
    op.drop_table("routing_targets")
    op.drop_table("mapping_routing")
    with op.batch_alter_table("watermark_advances") as batch:
        batch.drop_column("route")
    with op.batch_alter_table("servers") as batch:
        batch.drop_column("topology_locked")
