"""Initial schema: servers, mappings and targets, tokens, config epoch, and the job log.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 08:25:08.684040
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # sqlite autoincrements INTEGER only

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "config_epoch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(
        sa.table("config_epoch", sa.column("id"), sa.column("epoch")), [{"id": 1, "epoch": 0}]
    )
    op.create_table(
        "join_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_table(
        "servers",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("region", sa.String(length=255), nullable=False),
        sa.Column("group_name", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=True),
        sa.Column("capacity_weight", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "mappings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("include", sa.JSON(), nullable=False),
        sa.Column("exclude", sa.JSON(), nullable=False),
        sa.Column("durability", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_node"],
            ["servers.node_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "catchup",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("target_node", sa.String(length=64), nullable=False),
        sa.Column("files", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id", "source_node", "target_node"),
    )
    op.create_table(
        "changes",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.String(length=32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("reported_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id", "source_node", "seq"),
    )
    op.create_index("ix_changes_seq", "changes", ["seq"], unique=False)

    op.create_table(
        "exceptions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("target_node", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("path_key", sa.String(length=64), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_exceptions_key",
        "exceptions",
        ["mapping_id", "source_node", "target_node", "seq", "path_key"],
        unique=True,
    )

    op.create_table(
        "mapping_targets",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["servers.node_id"],
        ),
        sa.PrimaryKeyConstraint("mapping_id", "node_id"),
    )
    op.create_index("ix_mapping_targets_node", "mapping_targets", ["node_id"], unique=False)

    op.create_table(
        "watermark_advances",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("target_node", sa.String(length=64), nullable=False),
        sa.Column("from_seq", sa.BigInteger(), nullable=False),
        sa.Column("to_seq", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("wire_bytes", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_watermark_advances_key",
        "watermark_advances",
        ["mapping_id", "source_node", "target_node", "to_seq"],
        unique=False,
    )

    op.create_table(
        "watermarks",
        sa.Column("mapping_id", sa.Integer(), nullable=False),
        sa.Column("source_node", sa.String(length=64), nullable=False),
        sa.Column("target_node", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["mapping_id"], ["mappings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("mapping_id", "source_node", "target_node"),
    )


def downgrade() -> None:
    op.drop_table("watermarks")
    op.drop_index("ix_watermark_advances_key", table_name="watermark_advances")

    op.drop_table("watermark_advances")
    op.drop_index("ix_mapping_targets_node", table_name="mapping_targets")

    op.drop_table("mapping_targets")
    op.drop_index("ux_exceptions_key", table_name="exceptions")

    op.drop_table("exceptions")
    op.drop_index("ix_changes_seq", table_name="changes")

    op.drop_table("changes")
    op.drop_table("catchup")
    op.drop_table("mappings")
    op.drop_table("servers")
    op.drop_table("join_tokens")
    op.drop_table("config_epoch")
    op.drop_table("api_tokens")
