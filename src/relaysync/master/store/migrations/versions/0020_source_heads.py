"""Each source's journal head per mapping: `source_heads`, the highest seq the source agent says
it has journaled (sent with its figures, every metrics_interval_s).

A mapping's head seq (its lag figures) came only from the change rows its targets report: with
every target down nothing reports, and the lag showed 0 while the source journaled on. The head
is now the higher of the two. An upgrade starts with no rows (the change rows as before, until
each source's next figures report); the downgrade drops the table.

Revision ID: 0020_source_heads
Revises: 0019_site_query_variants
Create Date: 2026-12-06 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_source_heads"
down_revision: str | None = "0019_site_query_variants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "source_heads",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("reported_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id", "source_node"),
    )


def downgrade() -> None:
    op.drop_table("source_heads")
