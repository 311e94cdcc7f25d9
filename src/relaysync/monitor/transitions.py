"""The monitor's alert transitions (a mixin of MonitorService, monitor/engine.py): each
observation fed to its condition; a change written to the alert log, published and notified
(held back while its key flaps: monitor/flapping.py); what is no longer checked resolved
quietly. A write the store refuses takes the change back: the next tick makes it again."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from relaysync.errors import StoreError
from relaysync.monitor.alerts import Notice
from relaysync.monitor.flapping import NOTICES_PER_WINDOW, NoticeLimiter
from relaysync.monitor.notifier import Notifier
from relaysync.monitor.observations import Observation
from relaysync.monitor.thresholds import Conditions, Transition
from relaysync.monitor.types import AlertInfo

if TYPE_CHECKING:
    from relaysync.monitor.engine import FleetStore, Publish

logger = logging.getLogger("relaysync.monitor.engine")  # the monitor's one logger


class AlertTransitions:
    """MonitorService's state, as its transitions use it (set in its __init__)."""

    store: FleetStore
    conditions: Conditions
    limiter: NoticeLimiter
    notifier: Notifier
    publish: Publish
    _key_server: dict[str, str]
    _unchecked: set[str]
    _tg: TaskGroup | None

    async def _apply(
        self, observations: list[Observation], live: set[str], now: float, mono: float
    ) -> None:
        """Feed each observation to its condition and write its change to the alert log. A write
        the store refuses takes the change back and skips the rest of the tick: the next tick
        makes it again (the condition already changed, it would never be written)."""
        for o in observations:
            self._key_server[o.key] = o.server
            transition = self.conditions.update(
                o.key, for_s=o.for_s, bad=o.bad, clear=o.clear, now=mono
            )
            try:
                if transition is Transition.FIRE:
                    await self._fire(o, now, mono)
                elif transition is Transition.RESOLVE:
                    await self._resolve(o, now, mono)
            except StoreError:
                # firing again, or not yet: a fire keeps its bad_since, so it is due at once
                self.conditions.get(o.key, o.for_s).firing = transition is Transition.RESOLVE
                raise
        await self._forget({o.key for o in observations} | live, now)

    async def _fire(self, o: Observation, now: float, mono: float) -> None:
        alert, new = await anyio.to_thread.run_sync(
            partial(
                self.store.monitoring.fire_alert,
                key=o.key,
                server=o.server,
                kind=o.kind,
                subject=o.subject,
                value=o.value,
                message=o.message,
                now=now,
            )
        )
        if new:
            self._announce(alert, "firing", o, now, mono)

    async def _resolve(self, o: Observation, now: float, mono: float) -> None:
        resolved = await anyio.to_thread.run_sync(
            partial(self.store.monitoring.resolve_alert, o.key, now=now, value=o.value, note=o.note)
        )
        if resolved is not None:
            self._announce(resolved, "resolved", o, now, mono)

    async def _forget(self, keep: set[str], now: float) -> None:
        """Rules, probes or servers that are gone: their open alerts resolve, quietly. Threshold
        keys whose figures are stale keep their state (heartbeat and no_data cover a silent
        agent). A key whose resolve the store refused is resolved at a later tick."""
        self.limiter.retain(keep)
        self._unchecked.update(self.conditions.prune(keep))
        for key in sorted(self._unchecked):
            resolved = await anyio.to_thread.run_sync(
                partial(self.store.monitoring.resolve_alert, key, now=now)
            )
            self._unchecked.discard(key)
            if resolved is not None:
                self.publish(
                    "alert_resolved",
                    {
                        "alert_id": resolved.id,
                        "server": resolved.server,
                        "subject": resolved.subject,
                        "reason": "no longer checked",
                    },
                )

    def _announce(
        self, alert: AlertInfo, state: str, o: Observation, now: float, mono: float
    ) -> None:
        """Log, publish and notify a change: the notice says when on the wall clock (`now`);
        its limits count on the monotonic one (`mono`)."""
        notice = Notice(
            alert_id=alert.id,
            server=alert.server,
            metric=alert.subject,
            value=o.value,
            state=state,
            message=alert.message,
            at=now,
        )
        self.publish(
            "alert_" + state,
            {
                "alert_id": alert.id,
                "server": alert.server,
                "kind": alert.kind,
                "subject": alert.subject,
                "value": o.value,
                "message": alert.message,
            },
        )
        self._notify(alert.key, notice, o.rule_since, mono)

    def _notify(self, key: str, notice: Notice, rule_since: float, mono: float) -> None:
        """Send the notice unless its key used up its notices for now (flapping). The limiter
        counts on the monotonic clock: on the wall clock a step forward (NTP) ended windows and
        sent held changes at once, a step back held them until the wall clock caught up."""
        admitted = self.limiter.admit(key, notice, mono, rule_since=rule_since)
        if admitted is None:
            logger.info(
                "alert %s (%s) held back: flapping, %s notices per %g s at most; sent if"
                " unchanged for %g s",
                notice.alert_id,
                notice.state,
                NOTICES_PER_WINDOW,
                self.limiter.window_s,
                self.limiter.settle_s,
            )
            return
        assert self._tg is not None
        self.notifier.start(self._tg, admitted)

    def _alarm(self, notice: Notice) -> None:
        self.publish("alarm", notice.to_json())
