"""Time-of-day bandwidth windows on link policies, and delta or dump copy forced per mapping.

`link_policies` gains `windows` (JSON: [{days, start, end, bandwidth_limit_mbit}, ...], tried in
order) and `timezone` (IANA name; "" = UTC); `mapping_modes` gains `transfer_override`
(auto | delta | whole; "" = each link's policy decides). Its own branch off 0001, like the
others; it alters tables of 0004 and 0005, so it depends on them.

Revision ID: 0008_policy_windows
Revises: 0001
Create Date: 2026-11-27 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_policy_windows"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = ("0004_policies", "0005_modes")


def upgrade() -> None:
    op.add_column(
        "link_policies", sa.Column("windows", sa.JSON(), nullable=False, server_default="[]")
    )
    op.add_column(
        "link_policies",
        sa.Column("timezone", sa.String(length=64), nullable=False, server_default=""),
    )
    op.add_column(
        "mapping_modes",
        sa.Column("transfer_override", sa.String(length=8), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_column("mapping_modes", "transfer_override")
    op.drop_column("link_policies", "timezone")
    op.drop_column("link_policies", "windows")
