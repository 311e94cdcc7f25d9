"""Resolved alerts age out like the job log's history: `retention.alerts_days` (90 by default, 0
keeps them for ever) and the index on `alerts.resolved_at` the pruner deletes by.

The alert log grew for ever (every fire and resolve of every key, a flapping probe's included).
Open alerts (firing or acknowledged) are never pruned. The downgrade drops the index and the
column.

Revision ID: 0025_alert_retention
Revises: 0024_journal_ids
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025_alert_retention"
down_revision: str | None = "0024_journal_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "retention",
        sa.Column("alerts_days", sa.Integer(), nullable=False, server_default="90"),
    )
    op.create_index("ix_alerts_resolved_at", "alerts", ["resolved_at"])


def downgrade() -> None:
    op.drop_index("ix_alerts_resolved_at", table_name="alerts")
    with op.batch_alter_table("retention") as batch:
        batch.drop_column("alerts_days")
