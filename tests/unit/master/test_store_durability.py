"""Store on SQLite: a committed write outlives a power loss, not only a kill of the master.

Agents drop a commit report once the master says the job log took it, and an API call answered
"done" must stay done, so every connection of the store commits with synchronous=FULL (the WAL
is fsynced at each commit; NORMAL, SQLite's WAL default, may lose the last commits on a power
loss). A power loss cannot be staged here: the setting each connection commits with is what
decides it, read back from SQLite itself.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from relaysync.master.store import Store

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def test_every_store_connection_commits_durably(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'master.db'}")
    try:
        store.migrate()
        store.bump_epoch()  # a write transaction, on a write session's connection
        with store._write("check") as session:
            assert session.execute(sa.text("PRAGMA synchronous")).scalar() == FULL
        with store._read("check") as session:
            assert session.execute(sa.text("PRAGMA synchronous")).scalar() == FULL
            assert session.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        store.close()
