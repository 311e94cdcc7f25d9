"""The monitor's notifications over a real store, a real failing TCP probe and real receivers:
what happens when a channel cannot deliver."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import anyio
import pytest
import trustme
from tests._monitor_receivers import (
    Mailbox,
    Recorded,
    email_config,
    free_port,
    http_receiver,
    smtp_server,
    tcp_service,
)

from relaysync.master.store import Store
from relaysync.monitor import notifier
from relaysync.monitor.engine import MonitorService

INTERVAL_S = 0.1
WAIT_S = 30.0  # generous: a notice is due within a few ticks, or retries, of the alert


def _monitor(store: Store, **options: float) -> MonitorService:
    """A monitor of no agent (its probes and the master's own figures), ticking every
    INTERVAL_S."""
    return MonitorService(
        store=store,
        publish=lambda kind, data: None,
        links_up=set,
        self_figures=list,
        interval_s=INTERVAL_S,
        **options,
    )


def _closed_port_probe(store: Store) -> None:
    """A TCP probe of a port nobody listens on: it fires at the first tick."""
    store.monitoring.create_probe(name="down", kind="tcp", host="127.0.0.1", port=free_port())


def _run_until(
    monitor: MonitorService,
    done: Callable[[], bool],
    *,
    first: Callable[[], bool] | None = None,
    between: Callable[[], None] = list,
) -> bool:
    """Run the monitor until `done()` holds or WAIT_S pass; call `between` once `first()` holds
    (default: an alert fired). Returns whether `done()` held (a crash of the monitor raises)."""
    first = first or (lambda: bool(monitor.conditions.firing_keys()))

    async def main() -> bool:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            with anyio.move_on_after(WAIT_S):
                while not first():
                    await anyio.sleep(0.02)
                between()
                while not done():
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        return done()

    return anyio.run(main)


@pytest.fixture
def receiver() -> Iterator[tuple[list[Recorded], str]]:
    with http_receiver() as got:
        yield got


def test_a_channel_that_breaks_does_not_stop_the_monitor(
    store: Store, receiver: tuple[list[Recorded], str]
) -> None:
    """A webhook URL that httpx cannot use (stored by a release that did not check it) fails its
    own deliveries only: the other channels are notified and the monitor runs on."""
    log, url = receiver
    store.monitoring.create_channel(
        name="typo", kind="webhook", config={"url": "http://127.0.0.1:99999/hook"}
    )
    store.monitoring.create_channel(name="good", kind="webhook", config={"url": url + "/hook"})
    _closed_port_probe(store)
    monitor = _monitor(store)
    assert _run_until(monitor, lambda: bool(log))
    assert json.loads(log[0].body)["state"] == "firing"


def test_a_failed_delivery_does_not_log_the_urls_secrets(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning about a webhook or SMS gateway that does not answer names it without the
    credentials in its URL (userinfo, query values)."""
    closed = free_port()
    store.monitoring.create_channel(
        name="hook",
        kind="webhook",
        config={"url": f"http://bot:pw-SECRET@127.0.0.1:{closed}/hook?token=q-SECRET"},
    )
    store.monitoring.create_channel(
        name="sms",
        kind="sms",
        config={"url": f"http://127.0.0.1:{closed}/send?key=k-SECRET&to={{server}}"},
    )
    _closed_port_probe(store)
    caplog.set_level(logging.WARNING, logger="relaysync.monitor.engine")

    def warned() -> bool:
        return (
            sum("via hook" in r.getMessage() or "via sms" in r.getMessage() for r in caplog.records)
            >= 2
        )

    assert _run_until(_monitor(store), warned)
    assert "127.0.0.1" in caplog.text and "SECRET" not in caplog.text, caplog.text


def test_an_email_is_delivered_once_the_smtp_server_is_back(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """SMTP down when the alert fires: the notice is retried, not lost."""
    ca, port = trustme.CA(), free_port()
    store.monitoring.create_channel(
        name="mail",
        kind="email",
        config=email_config(ca, port),
    )
    _closed_port_probe(store)
    boxes: list[Mailbox] = []
    with ExitStack() as stack:

        def start_smtp() -> None:  # after the first attempt, which nothing answered
            box, _ = stack.enter_context(smtp_server(ca, port=port))
            boxes.append(box)

        def refused() -> bool:
            return any("via mail" in r.getMessage() for r in caplog.records)

        caplog.set_level(logging.WARNING, logger="relaysync.monitor.engine")
        assert _run_until(
            _monitor(store),
            lambda: bool(boxes and boxes[0].messages),
            first=refused,
            between=start_smtp,
        )
    assert "FIRING" in boxes[0].messages[0]["data"]


def test_notices_of_an_alert_arrive_in_order_after_an_smtp_outage(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SMTP down while an alert fires and resolves: once it is back the FIRING arrives before
    the RESOLVED. Each notice used to retry on its own backoff, so the RESOLVED (failed fewer
    times, so retried sooner) arrived first and the mailbox ended on FIRING for an alert over."""
    monkeypatch.setattr(notifier, "NOTIFY_RETRY_FIRST_S", 0.05)  # the backoff, 20 times faster
    monkeypatch.setattr(notifier, "NOTIFY_RETRY_MAX_S", 3.0)
    ca, smtp_port, target = trustme.CA(), free_port(), free_port()
    store.monitoring.create_channel(
        name="mail",
        kind="email",
        config=email_config(ca, smtp_port),
    )
    store.monitoring.create_probe(name="web", kind="tcp", host="127.0.0.1", port=target)
    caplog.set_level(logging.WARNING, logger="relaysync.monitor.notifier")
    boxes: list[Mailbox] = []
    with ExitStack() as stack:

        def failed_five_times() -> bool:  # the FIRING's next try is 1.6 s away
            return sum("via mail failed" in r.getMessage() for r in caplog.records) >= 5

        def resolved() -> bool:
            return [a.state for a in store.monitoring.list_alerts()] == ["resolved"]

        def smtp_back() -> bool:
            if resolved() and not boxes:
                boxes.append(stack.enter_context(smtp_server(ca, port=smtp_port))[0])
            return bool(boxes) and len(boxes[0].messages) == 2

        assert _run_until(
            _monitor(store),
            smtp_back,
            first=failed_five_times,
            between=lambda: stack.enter_context(tcp_service(target)),  # the target is back
        )
    got = [m["data"] for m in boxes[0].messages]
    assert ["FIRING" in got[0], "RESOLVED" in got[1]] == [True, True], got
