"""api_tokens gain `scope` ("read" or "admin"), api_tokens and join_tokens `created_by`.

A read token may only GET and HEAD; an admin token may do everything, tokens included
(master/api/_context.py). Tokens stored before this revision get "admin" (the server default):
they keep what they could do, so no operator's script breaks; `created_by` stays NULL for
them ("admin" or "api:<id>" of the token that created a new one).

Revision ID: 0018_token_scopes
Revises: 0017_target_policy
Create Date: 2026-12-05 20:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_token_scopes"
down_revision: str | None = "0017_target_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("scope", sa.String(8), nullable=False, server_default="admin"))
        batch.add_column(sa.Column("created_by", sa.String(32), nullable=True))
    with op.batch_alter_table("join_tokens") as batch:
        batch.add_column(sa.Column("created_by", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("join_tokens") as batch:
        batch.drop_column("created_by")
    # dropping a column rebuilds the table on SQLite: keep its AUTOINCREMENT (0015_api_token_ids)
    with op.batch_alter_table("api_tokens", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("created_by")
        batch.drop_column("scope")
