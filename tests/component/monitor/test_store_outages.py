"""The monitor while the store refuses its writes or reads, over a real store (SQLite or
PostgreSQL, locked or missing a table from another connection), a real TCP probe and a real SMTP
server: an alert change the store refused is made once it can be, never lost."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import anyio
import psycopg
import pytest
import trustme
from tests._monitor_receivers import (
    Mailbox,
    email_config,
    free_port,
    smtp_server,
    tcp_service,
)
from tests._store_locks import table_locked
from tests.component.monitor.test_notify import _monitor as notify_monitor

from relaysync.master.store import Store, _engine
from relaysync.monitor.engine import MonitorService

LOCK_TIMEOUT_MS = 300  # a write behind the lock fails this soon (10 s in production)
WAIT_S = 30.0  # generous: each step is due within a few ticks


@pytest.fixture
def quick_store(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A store whose writes behind another connection's lock fail after LOCK_TIMEOUT_MS."""
    monkeypatch.setattr(_engine, "SQLITE_BUSY_TIMEOUT_MS", LOCK_TIMEOUT_MS)
    monkeypatch.setattr(_engine, "PG_LOCK_TIMEOUT_MS", LOCK_TIMEOUT_MS)
    store = Store(store_url)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def mail_channel(store: Store) -> Iterator[Mailbox]:
    """A real SMTP server (STARTTLS, AUTH) and an e-mail channel sending to it."""
    ca = trustme.CA()
    with smtp_server(ca) as (box, port):
        store.monitoring.create_channel(
            name="mail",
            kind="email",
            config=email_config(ca, port),
        )
        yield box


def states(box: Mailbox) -> list[str]:
    """The state of each e-mail received, in order."""
    with box.lock:
        texts = [m["data"] for m in box.messages]
    return ["FIRING" if "FIRING" in t else "RESOLVED" if "RESOLVED" in t else "?" for t in texts]


def run(monitor: MonitorService, script: Callable[[], object]) -> None:
    """Run the monitor while the coroutine `script()` runs; fail if it takes over WAIT_S."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            with anyio.fail_after(WAIT_S):
                await script()  # type: ignore[misc]
            tg.cancel_scope.cancel()

    anyio.run(main)


async def until(done: Callable[[], bool], what: str) -> None:
    """Poll `done()` until it holds; the caller's fail_after bounds the wait."""
    while not done():
        await anyio.sleep(0.02)
    assert done(), what


def refused(caplog: pytest.LogCaptureFixture, operation: str) -> Callable[[], bool]:
    """Whether the monitor logged a tick skipped because the store refused `operation`."""
    return lambda: any(
        "tick skipped" in r.getMessage() and operation in r.getMessage() for r in caplog.records
    )


def _monitor(store: Store) -> MonitorService:
    # a third notice of a key within the window waits 0.2 s, not 2 min
    return notify_monitor(store, notice_window_s=1.0)


def test_an_alert_the_store_refused_to_fire_fires_once_it_can(
    quick_store: Store, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The old monitor marked the alert firing before the store wrote it: a refused write left
    no alert row and no e-mail, ever (the next ticks saw it firing already)."""
    caplog.set_level(logging.WARNING, logger="relaysync.monitor.engine")
    with mail_channel(quick_store) as box, ExitStack() as lock:
        probe = quick_store.monitoring.create_probe(
            name="web", kind="tcp", host="127.0.0.1", port=free_port()
        )
        lock.enter_context(table_locked(store_url, "alerts"))
        monitor = _monitor(quick_store)

        async def script() -> None:
            await until(refused(caplog, "fire alert"), "the store refused the alert")
            lock.close()
            await until(lambda: states(box) == ["FIRING"], "FIRING mailed")

        run(monitor, script)
    alerts = quick_store.monitoring.list_alerts()
    assert [(a.key, a.state) for a in alerts] == [(f"probe:{probe.id}", "firing")], alerts


def test_an_alert_the_store_refused_to_resolve_resolves_once_it_can(
    quick_store: Store, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused resolve left the incident open and mailed no RESOLVED; the target's next
    outage then found that incident open and mailed no FIRING either."""
    caplog.set_level(logging.WARNING, logger="relaysync.monitor.engine")
    port = free_port()
    with mail_channel(quick_store) as box, ExitStack() as up:
        quick_store.monitoring.create_probe(name="web", kind="tcp", host="127.0.0.1", port=port)
        monitor = _monitor(quick_store)

        async def script() -> None:
            await until(lambda: states(box) == ["FIRING"], "FIRING mailed")
            with table_locked(store_url, "alerts"):
                up.enter_context(tcp_service(port))  # the target is back
                await until(refused(caplog, "resolve alert"), "the store refused the resolve")
            await until(lambda: states(box) == ["FIRING", "RESOLVED"], "RESOLVED mailed")
            up.close()  # down again: a new incident
            await until(lambda: states(box) == ["FIRING", "RESOLVED", "FIRING"], "FIRING again")

        run(monitor, script)
    alerts = quick_store.monitoring.list_alerts()
    assert sorted(a.state for a in alerts) == ["firing", "resolved"], alerts


def test_a_deleted_probe_whose_resolve_the_store_refused_is_resolved_later(
    quick_store: Store, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe deleted while firing resolves its alert quietly; the old monitor forgot the key
    before the store wrote that, so a refused write left the incident open for good."""
    caplog.set_level(logging.WARNING, logger="relaysync.monitor.engine")
    probe = quick_store.monitoring.create_probe(
        name="web", kind="tcp", host="127.0.0.1", port=free_port()
    )
    monitor = _monitor(quick_store)

    def open_alerts() -> list[str]:
        return [a.key for a in quick_store.monitoring.list_alerts(open_only=True)]

    async def script() -> None:
        await until(lambda: open_alerts() == [f"probe:{probe.id}"], "the probe's alert fired")
        quick_store.monitoring.delete_probe(probe.id)  # no await: no tick in between
        with table_locked(store_url, "alerts"):
            await until(refused(caplog, "resolve alert"), "the store refused the resolve")
        await until(lambda: open_alerts() == [], "the alert resolved")

    run(monitor, script)


def rename_table(url: str, old: str, new: str) -> None:
    """Rename a table from another connection: the store's queries of it fail (StoreError)."""
    sql = f"ALTER TABLE {old} RENAME TO {new}"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None) as lite:
            lite.execute(sql)
        lite.close()
        return
    with psycopg.connect(
        url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as pg:
        pg.execute(sql)


def test_a_store_failure_reading_the_channels_delays_a_notice_not_the_monitor(
    quick_store: Store, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The old notifier read the channels in a task of the monitor's task group, outside the
    tick's `except StoreError`: a failure ended the monitor, and with it the master. Now the
    notice waits for the store (none read yet), or goes to the channels read last."""
    caplog.set_level(logging.WARNING, logger="relaysync.monitor.notifier")
    unread = "alert channels not read"
    with mail_channel(quick_store) as box:
        quick_store.monitoring.create_probe(
            name="web1", kind="tcp", host="127.0.0.1", port=free_port()
        )
        rename_table(store_url, "alert_channels", "alert_channels_away")
        monitor = _monitor(quick_store)

        async def script() -> None:
            await until(lambda: unread in caplog.text, "the channels could not be read")
            rename_table(store_url, "alert_channels_away", "alert_channels")
            await until(lambda: states(box) == ["FIRING"], "FIRING mailed once read")
            rename_table(store_url, "alert_channels", "alert_channels_away")
            caplog.clear()
            quick_store.monitoring.create_probe(
                name="web2", kind="tcp", host="127.0.0.1", port=free_port()
            )
            await until(lambda: states(box) == ["FIRING"] * 2, "FIRING mailed, as read last")
            assert "sending to those read last" in caplog.text, caplog.text
            rename_table(store_url, "alert_channels_away", "alert_channels")

        run(monitor, script)
