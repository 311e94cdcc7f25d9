"""Job-log retention settings, and source-to-target latency in the job log.

`retention` holds one row: how many days of change rows, watermark advances, resolved exceptions
and finished recovery jobs the master keeps, and what its last prune removed. The job log gains
each change's source time (`changes.changed_at`) and per advance the summed latency
(`watermark_advances.latency_ms` over `latency_files` files), plus the time indexes the pruner
deletes by.

Revision ID: 0009_retention
Revises: 0001
Create Date: 2026-11-27 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_retention"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retention",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("changes_days", sa.Integer(), nullable=False),
        sa.Column("advances_days", sa.Integer(), nullable=False),
        sa.Column("exceptions_days", sa.Integer(), nullable=False),
        sa.Column("recovery_jobs_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("last_pruned_at", sa.Float(), nullable=True),
        sa.Column("last_pruned", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.add_column(
        "changes", sa.Column("changed_at", sa.Float(), nullable=False, server_default="0")
    )
    op.add_column(
        "watermark_advances",
        sa.Column("latency_ms", sa.Float(), nullable=False, server_default="0"),
    )
    op.add_column(
        "watermark_advances",
        sa.Column("latency_files", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_changes_reported_at", "changes", ["reported_at"])
    op.create_index("ix_watermark_advances_at", "watermark_advances", ["at"])
    op.create_index("ix_exceptions_resolved_at", "exceptions", ["resolved_at"])


def downgrade() -> None:
    op.drop_index("ix_exceptions_resolved_at", table_name="exceptions")
    op.drop_index("ix_watermark_advances_at", table_name="watermark_advances")
    op.drop_index("ix_changes_reported_at", table_name="changes")
    with op.batch_alter_table("watermark_advances") as batch:
        batch.drop_column("latency_files")
        batch.drop_column("latency_ms")
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("changed_at")
    op.drop_table("retention")
