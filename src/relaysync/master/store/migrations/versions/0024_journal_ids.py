"""Which source journal a head and a watermark count in: `source_heads.journal_id` and
`journal_since`, `watermarks.journal_id`.

A source whose journal was recreated (state lost, agent reinstalled) counts from seq 1 again
under a new journal id, but the heads and the targets' watermarks kept the old journal's
higher seqs (a watermark was only ever raised; the head took the change rows' highest seq),
so the lag figures compared seqs of two journals: a target showed no lag while the new
journal's changes were not on it. A head or a report naming another journal now voids what
counted in the old one; `journal_since` is when the head's journal was first heard (the change
rows reported before it are the old journal's and no longer raise the head). `retired_journals`
keeps the journals a new one replaced: a late report of one (a target's outbox, the job-log
spool) adds neither watermark nor change rows.

Rows of an upgrade start at "" (not known: matches any journal, the first id heard is taken)
and 0, with no journal retired; the downgrade drops the columns and the table.

Revision ID: 0024_journal_ids
Revises: 0023_released_journal
Create Date: 2026-12-07 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024_journal_ids"
down_revision: str | None = "0023_released_journal"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retired_journals",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("journal_id", sa.String(length=64), nullable=False),
        sa.Column("retired_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id", "source_node", "journal_id"),
    )
    op.add_column(
        "source_heads",
        sa.Column("journal_id", sa.String(64), nullable=False, server_default=""),
    )
    op.add_column(
        "source_heads",
        sa.Column("journal_since", sa.Float(), nullable=False, server_default="0"),
    )
    op.add_column(
        "watermarks",
        sa.Column("journal_id", sa.String(64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("retired_journals")
    with op.batch_alter_table("watermarks") as batch:
        batch.drop_column("journal_id")
    with op.batch_alter_table("source_heads") as batch:
        batch.drop_column("journal_since")
        batch.drop_column("journal_id")
