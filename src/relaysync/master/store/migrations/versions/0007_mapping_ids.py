"""Mapping ids are never reused: the highest id ever given is kept beside the config epoch.

SQLite gives a deleted row's id to the next insert (no AUTOINCREMENT); agents keep journals,
manifests and watermarks under the mapping id, so a new mapping must never get an old id.

Revision ID: 0007_mapping_ids
Revises: 0001
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_mapping_ids"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "config_epoch",
        sa.Column("last_mapping_id", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute(
        "UPDATE config_epoch SET last_mapping_id = (SELECT COALESCE(MAX(id), 0) FROM mappings)"
    )


def downgrade() -> None:
    op.drop_column("config_epoch", "last_mapping_id")
