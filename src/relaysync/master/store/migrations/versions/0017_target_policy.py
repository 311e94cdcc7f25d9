"""mapping_modes gain `symlinks` and `mode_mask`: what the targets let land in their folders.

`symlinks`: "safe" (no symlink that points outside the folder), "any", or "" (each target
agent's own default, "safe" unless its configuration says otherwise). `mode_mask`: the
permission bits removed from what the targets write, 2 (o-w) unless the operator keeps them
(watch/target_policy.py). Existing mappings get "" and 2 (a mapping without a row too): their
targets stop taking unsafe links and world-writable modes, as a new mapping's do. Beside the
mapping's other per-mapping settings over its spec (mode, versions, transfer), not in `mappings`.

Revision ID: 0017_target_policy
Revises: 0016_server_cert_dates
Create Date: 2026-12-05 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_target_policy"
down_revision: str | None = "0016_server_cert_dates"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mapping_modes") as batch:
        batch.add_column(sa.Column("symlinks", sa.String(8), nullable=False, server_default=""))
        batch.add_column(sa.Column("mode_mask", sa.Integer(), nullable=False, server_default="2"))


def downgrade() -> None:
    with op.batch_alter_table("mapping_modes") as batch:
        batch.drop_column("mode_mask")
        batch.drop_column("symlinks")
