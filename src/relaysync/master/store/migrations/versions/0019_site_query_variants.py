"""Query-string variants per site: `sites.query_variants`, whether a changed file's cached copies
under a query string (`/a.css?v=3`, `/a.css?utm_source=x`) are banned too.

It is opt-in: NULL (the default, which every site stored before gets) and false are off, so
an upgrade changes nothing. true turns it on: the site's Varnish caches get a BAN of `<path>?`
after each changed file's refresh or purge (docs/caches.md says what that costs), and the
site warns about its caches that cannot purge by prefix.

The downgrade drops the column in place, as 0014_site_listings does (a batch rebuild of `sites`
on SQLite would cascade its DROP to the purge queue and log).

Revision ID: 0019_site_query_variants
Revises: 0018_token_scopes
Create Date: 2026-12-05 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_site_query_variants"
down_revision: str | None = "0018_token_scopes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sites", sa.Column("query_variants", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("sites", "query_variants")
