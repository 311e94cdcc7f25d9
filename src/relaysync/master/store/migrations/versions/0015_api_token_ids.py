"""API token ids are never reused on SQLite: api_tokens gets AUTOINCREMENT.

API tokens are revoked by id (DELETE /api/tokens/api/{id}). Without AUTOINCREMENT SQLite gives
the next row max(id) + 1, so revoking the newest token freed its id for the next one created,
and a revocation retried or typed from an old listing revoked the new token instead, while
the event log showed two tokens under one id. Rows, ids and hashes are kept; PostgreSQL
sequences never give an id twice: there this revision does nothing.

Revision ID: 0015_api_token_ids
Revises: 0014_site_listings
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015_api_token_ids"
down_revision: str | None = "0014_site_listings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild(*, autoincrement: bool) -> None:
    with op.batch_alter_table(
        "api_tokens", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=False)
