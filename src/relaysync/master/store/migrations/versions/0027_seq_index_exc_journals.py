"""The index `ix_changes_mapping_seq` on changes (mapping_id, seq): the job log of one mapping.

The job-log page of one mapping (newest seq first, a limit) had no index in its order: SQLite
read every change row of the mapping by the primary key (mapping, source, seq, journal), figured
each one's committed targets (correlated subqueries), sorted them all and kept the first page:
13 s for a mapping of 1M rows. With the index it walks the mapping's rows newest first and stops
at the limit (11 ms). The downgrade drops the index.

Revision ID: 0027_seq_index_exc_journals
Revises: 0026_change_journals
Create Date: 2026-12-10 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0027_seq_index_exc_journals"
down_revision: str | None = "0026_change_journals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_changes_mapping_seq"


def upgrade() -> None:
    op.create_index(INDEX, "changes", ["mapping_id", "seq"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="changes")
