"""The index `ix_changes_mapping_seq` on changes (mapping_id, seq), the job log of one mapping;
and `exceptions.journal_id`, the source journal a failure's seq counts in.

The job-log page of one mapping (newest seq first, a limit) had no index in its order: SQLite
read every change row of the mapping by the primary key (mapping, source, seq, journal), figured
each one's committed targets (correlated subqueries), sorted them all and kept the first page:
13 s for a mapping of 1M rows. With the index it walks the mapping's rows newest first and stops
at the limit (11 ms).

A failure (exceptions, keyed by seq) did not say which journal its seq counts in: when a
source's journal was replaced, the old journal's open failure of seq q stayed open for good and
the new journal's change q counted as failed on that target; closing every open failure at the
switch also closed the new journal's own, which targets report before the source's head names
the new journal. A replaced journal's open failures are now closed by their journal
(_journals.py `retire`). Rows of an upgrade get "" (not known) and are left as they are.

The downgrade drops both.

Revision ID: 0027_seq_index_exc_journals
Revises: 0026_change_journals
Create Date: 2026-12-10 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027_seq_index_exc_journals"
down_revision: str | None = "0026_change_journals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_changes_mapping_seq"


def upgrade() -> None:
    op.create_index(INDEX, "changes", ["mapping_id", "seq"])
    # a constant default: no rewrite on PostgreSQL, none on SQLite either (ADD COLUMN)
    op.add_column(
        "exceptions",
        sa.Column("journal_id", sa.String(64), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("exceptions") as batch:
        batch.drop_column("journal_id")
    op.drop_index(INDEX, table_name="changes")
