"""Exceptions keep their op (`exceptions.op`), and are found by path
(`ix_exceptions_path`): a failure a later commit of its path makes moot is resolved by it
(store/_joblog_supersede.py), not only by a commit of its own (seq, path).

Rows written before this upgrade have no op (NULL): they are resolved by their own commit only,
as before. The downgrade drops the index and the column.

Revision ID: 0021_exception_ops
Revises: 0020_source_heads
Create Date: 2026-12-06 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_exception_ops"
down_revision: str | None = "0020_source_heads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("exceptions", sa.Column("op", sa.String(length=32), nullable=True))
    op.create_index(
        "ix_exceptions_path",
        "exceptions",
        ["mapping_id", "source_node", "target_node", "path_key"],
    )


def downgrade() -> None:
    op.drop_index("ix_exceptions_path", table_name="exceptions")
    with op.batch_alter_table("exceptions") as batch:
        batch.drop_column("op")
