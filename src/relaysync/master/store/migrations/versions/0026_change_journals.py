"""Change rows per source journal: `changes.journal_id`, in the primary key
(mapping_id, source_node, seq, journal_id).

A source whose journal was recreated counts from seq 1 again under a new journal id (0024), but
the change rows were keyed (mapping, source, seq) and inserted with ON CONFLICT DO NOTHING: the
new journal's changes at seqs the old one used were dropped while the old rows lived on (30 days
of retention), so the job log showed the old journal's op and path for them, the paths known
under a directory (the purge of a deleted directory on caches without bans) missed the files
the new journal made, and the change counts left them out. Each journal now keeps its own rows.

Rows of an upgrade get "" (not known: matches any journal, as a watermark's ""). On SQLite the
table is rebuilt (batch mode: one INSERT ... SELECT, seconds for millions of rows); on
PostgreSQL the column is added with a constant default (no rewrite) and the primary key's index
built again. The downgrade keeps one row per (mapping, source, seq), the one reported last.

Revision ID: 0026_change_journals
Revises: 0025_alert_retention
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026_change_journals"
down_revision: str | None = "0025_alert_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PK = "changes_pkey"  # PostgreSQL's name for it (0001 gave none); SQLite keeps none
OLD_KEY = ["mapping_id", "source_node", "seq"]
NEW_KEY = [*OLD_KEY, "journal_id"]
# the rows a downgrade drops: another of the same (mapping, source, seq) was reported later
_SHADOWED = """
DELETE FROM changes WHERE EXISTS (
    SELECT 1 FROM changes AS later
    WHERE later.mapping_id = changes.mapping_id AND later.source_node = changes.source_node
      AND later.seq = changes.seq
      AND (later.reported_at > changes.reported_at
           OR (later.reported_at = changes.reported_at AND later.journal_id > changes.journal_id))
)
"""


def _column() -> sa.Column[str]:
    return sa.Column("journal_id", sa.String(64), nullable=False, server_default="")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("changes", _column())
        op.drop_constraint(PK, "changes", type_="primary")
        op.create_primary_key(PK, "changes", NEW_KEY)
        return
    with warnings.catch_warnings():
        # the rebuilt table's key is the new one, as meant: SQLAlchemy warns that the copied
        # columns said otherwise
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_changes' specifies columns")
        with op.batch_alter_table("changes", recreate="always") as batch:
            batch.add_column(_column())
            batch.create_primary_key(PK, NEW_KEY)


def downgrade() -> None:
    op.execute(_SHADOWED)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(PK, "changes", type_="primary")
        op.create_primary_key(PK, "changes", OLD_KEY)
        op.drop_column("changes", "journal_id")
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_changes' specifies columns")
        with op.batch_alter_table("changes", recreate="always") as batch:
            batch.create_primary_key(PK, OLD_KEY)
            batch.drop_column("journal_id")
