"""Which source journal `released_upto` counts in: `mapping_modes.released_journal`.

A source whose journal was recreated (its state directory's journal deleted, the agent joined
again) counts from seq 1 under a new journal id; `released_upto` kept the old journal's higher
seq (a report only ever raised it), and so did the targets' watermarks, so `relaysync send`
waited for a seq that never came, or took the old watermarks for the new release done. The
source's ReleaseReport now names its journal, and another one than noted resets both.

Rows of an upgrade start at "" (none known: the first id reported is taken as it is); the
downgrade drops the column.

Revision ID: 0023_released_journal
Revises: 0022_released_release
Create Date: 2026-12-06 16:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023_released_journal"
down_revision: str | None = "0022_released_release"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "mapping_modes",
        sa.Column("released_journal", sa.String(64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("mapping_modes") as batch:
        batch.drop_column("released_journal")
