"""N:M jobs: member mappings per source, and the conflicts their targets report.

Revision ID: 0010_nm_jobs
Revises: 0001
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_nm_jobs"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "nm_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("include", sa.JSON(), nullable=False),
        sa.Column("exclude", sa.JSON(), nullable=False),
        sa.Column("durability", sa.String(length=16), nullable=False),
        sa.Column("conflict", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "nm_job_members",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["nm_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id"),
    )
    op.create_index("ix_nm_job_members_job_id", "nm_job_members", ["job_id"])
    op.create_table(
        "nm_conflicts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("target_node", sa.String(length=64), nullable=False),
        sa.Column("seq", BIG_ID, nullable=False),
        sa.Column("op", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("path_key", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("winner_node", sa.String(length=64), nullable=False),
        sa.Column("loser_node", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["nm_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "mapping_id", "target_node", "seq", "path_key", "at", name="uq_nm_conflict"
        ),
    )
    op.create_index("ix_nm_conflicts_job_id", "nm_conflicts", ["job_id"])


def downgrade() -> None:
    op.drop_table("nm_conflicts")
    op.drop_table("nm_job_members")
    op.drop_table("nm_jobs")
