"""Ids are never reused on SQLite: the tables whose ids key state outside their rows get AUTOINCREMENT.

Without it SQLite gives the next row max(id) + 1, so deleting the newest row frees its id for the
next insert, and a new row inherits whatever was kept under the old one:
- thresholds, probes: the monitor's conditions, probe results and running probes, and the alert
  keys (`threshold:<id>:<server>`, `probe:<id>`), hence the open alert of a deleted rule;
- alert_channels: the notifier's deliveries and the API's references to a channel;
- alerts: the alert id in notices, events and acknowledgements;
- recovery_jobs: the router's running jobs and the job id in recovery events;
- sites: the purger's queue, retries and drivers, keyed by site id; its purge_queue and purge_log
  rows cascade on the rebuild's DROP (foreign_keys is on), so they are copied aside and put back;
- purge_queue: the purger's queue, retries and finished ids, in memory and flushed later: a purge
  of a deleted site still in flight would retry, or delete, a new purge given its id.
Mappings need nothing: their ids come from config_epoch.last_mapping_id (0007_mapping_ids).
PostgreSQL sequences never give an id twice: there this revision does nothing. Rows and their
ids are kept; the first insert after it continues from the highest id present.

Revision ID: 0013_sqlite_ids
Revises: 0012_revoked_nodes
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013_sqlite_ids"
down_revision: str | None = "0012_revoked_nodes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "thresholds",
    "probes",
    "alert_channels",
    "alerts",
    "recovery_jobs",
    "sites",
    "purge_queue",  # after sites, whose rebuild puts its rows back
)
CHILDREN = {"sites": ("purge_queue", "purge_log")}  # ON DELETE CASCADE from the table


def _rebuild(table: str, *, autoincrement: bool) -> None:
    children = CHILDREN.get(table, ())
    for child in children:
        op.execute(f"CREATE TEMP TABLE _keep_{child} AS SELECT * FROM {child}")
    with op.batch_alter_table(
        table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
    for child in children:
        op.execute(f"INSERT INTO {child} SELECT * FROM _keep_{child}")
        op.execute(f"DROP TABLE _keep_{child}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        _rebuild(table, autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in reversed(TABLES):
        _rebuild(table, autoincrement=False)
