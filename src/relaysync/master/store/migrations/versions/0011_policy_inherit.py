"""Link policy fields may be inherited: NULL in a row means "the section's value, or its default".

`link_policies.tls`, `transfer`, `zstd_level`, `bandwidth_limit_mbit`, `windows` and `timezone`
become nullable. Existing rows keep every field set, so they still override their section
whole, as they did. It follows 0008, whose columns it alters, and depends on every other
branch so that it runs last: on an empty database, alembic 1.x (HeadMaintainer) fails with
KeyError '0001' when 0008 (which depends on 0004 and 0005) is applied before any other branch,
as it was when this revision was a new branch off 0001 depending on 0008, or followed 0008 alone.

Revision ID: 0011_policy_inherit
Revises: 0008_policy_windows
Create Date: 2026-11-28 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011_policy_inherit"
down_revision: str | None = "0008_policy_windows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = (
    "0002_sites",
    "0003_monitoring",
    "0006_routing",
    "0007_mapping_ids",
    "0009_retention",
    "0010_nm_jobs",
)

# column, type, the value a NULL took before this revision (what PUT stored for a field left out)
COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any], str], ...] = (
    ("tls", sa.Boolean(), "true"),
    ("transfer", sa.String(length=8), "'auto'"),
    ("zstd_level", sa.Integer(), "0"),
    ("bandwidth_limit_mbit", sa.Float(), "0"),
    ("windows", sa.JSON(), "'[]'"),
    ("timezone", sa.String(length=64), "''"),
)
SERVER_DEFAULTS = {"windows": "[]", "timezone": ""}  # 0008 added these columns with server defaults


def upgrade() -> None:
    # The server defaults go too: an insert that leaves a field out means "inherited" now.
    with op.batch_alter_table("link_policies") as batch:
        for name, type_, _ in COLUMNS:
            batch.alter_column(name, existing_type=type_, nullable=True, server_default=None)


def downgrade() -> None:
    # Lossy: an inherited field takes the fixed value a left-out field got before, not its section's.
    for name, _, old in COLUMNS:
        op.execute(f"UPDATE link_policies SET {name} = {old} WHERE {name} IS NULL")
    with op.batch_alter_table("link_policies") as batch:
        for name, type_, _ in COLUMNS:
            batch.alter_column(
                name, existing_type=type_, nullable=False, server_default=SERVER_DEFAULTS.get(name)
            )
