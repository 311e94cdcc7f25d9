"""Which release `released_upto` covers: `mapping_modes.released_release`.

`relaysync send` asks for a new release (the counter goes up) and follows it until every target
holds what it covers. `released_upto` kept the previous release's seq until the source reported
the new one, so a second send right after the first, or with the source down, saw the old seq
already committed everywhere and reported success at once; and a later release that covered
this one made it wait for its own number for ever. The source's report now also records its
release number, even when the seq it covers did not move (nothing new was journaled).

Rows of an upgrade start at 0 (no release known to be taken); the downgrade drops the column.

Revision ID: 0022_released_release
Revises: 0021_exception_ops
Create Date: 2026-12-06 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022_released_release"
down_revision: str | None = "0021_exception_ops"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "mapping_modes",
        sa.Column("released_release", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("mapping_modes") as batch:
        batch.drop_column("released_release")
