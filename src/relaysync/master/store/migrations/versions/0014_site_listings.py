"""Directory listings per site: `sites.listings`, whether the site's web server lists directories.

A web server with `autoindex on;` (nginx) or mod_autoindex (Apache) serves `/dir/` of a directory
without an index file as a page listing its entries, and caches keep that page; with `listings`
set, the purger refreshes it when a change adds or removes a name in the directory
(purge/listings.py). Existing sites get false: they are planned as before.

The downgrade drops the column in place (ALTER TABLE ... DROP COLUMN, SQLite 3.35 or later): a
batch rebuild of `sites` on SQLite would DROP the table, and with foreign keys on that deletes
every site's purge_queue and purge_log rows (0013_sqlite_ids copies them aside for that reason).

Revision ID: 0014_site_listings
Revises: 0013_sqlite_ids
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_site_listings"
down_revision: str | None = "0013_sqlite_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sites", sa.Column("listings", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    op.drop_column("sites", "listings")
