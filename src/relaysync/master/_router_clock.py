"""The router's clock: failed hops expire, targets unreachable too long fail, failed targets recover.

`RouterClock` is mixed into Router (master/router.py), which holds the state these methods read
and write under its lock, and calls `tick` every TICK_S.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

from relaysync.constants import RECEIVE_TIMEOUT_S
from relaysync.errors import ConfigError
from relaysync.master.events import EventBus, EventType
from relaysync.master.store._modes import next_run
from relaysync.master.store._recovery import FailedTarget, RecoveryJob
from relaysync.master.store._routing import RoutingSettings
from relaysync.master.store.store import Store
from relaysync.master.store.types import ServerInfo

logger = logging.getLogger("relaysync.master.router")  # the router's messages, as before the split

HOP_FAILED_TTL_S = 60.0  # a failed hop is avoided this long, then tried again
LINK_GRACE_S = (
    30.0  # after a master restart, a server stored "up" whose agent is not back by then is down
)

HopKey = tuple[int, str, str]  # (mapping id, parent node, child node)
TargetKey = tuple[int, str]  # (mapping id, target node)


class RouterClock:
    """Router methods for expiries, failures and recoveries (mixed into Router)."""

    store: Store
    events: EventBus
    _clock: Callable[[], float]
    _links_up: Callable[[], Collection[str]] | None
    _lock: threading.RLock
    _version: int
    _started_at: float
    _servers: dict[str, ServerInfo]
    _down: frozenset[str]
    _up_since: dict[str, float]
    _settings: dict[int, RoutingSettings]
    _failed: dict[int, dict[str, FailedTarget]]
    _failed_hops: dict[HopKey, float]
    _hop_errors: dict[HopKey, str]
    _unreachable_since: dict[TargetKey, float]
    _recoveries: dict[int, RecoveryJob]

    def _ensure_loaded(self) -> None:
        raise NotImplementedError

    def topology_changed(self, reason: str = "topology changed") -> None:
        raise NotImplementedError

    def refresh(self, reason: str, *, push: bool = False) -> None:
        raise NotImplementedError

    def _name(self, node_id: str) -> str:
        raise NotImplementedError

    def _source_of(self, mapping_id: int) -> str:
        raise NotImplementedError

    def tick(self) -> None:
        """Expire failed hops, fail targets unreachable too long, run due recoveries, finish done ones."""
        self._ensure_loaded()
        now = self._clock()
        self._expire_hops(now)
        self._check_links(now)
        self.refresh("periodic check")
        self._fail_unreachable(now)
        self._recover_due(now)
        self._finish_recoveries(now)

    def _expire_hops(self, now: float) -> None:
        with self._lock:
            expired = [k for k, until in self._failed_hops.items() if until <= now]
            for key in expired:
                del self._failed_hops[key]
                self._hop_errors.pop(key, None)
            if expired:
                self._version += 1
        if expired:
            logger.info(
                "failed hops expired, trying them again: %s",
                [f"{self._name(p)}>{self._name(c)}" for _, p, c in expired],
            )

    def _check_links(self, now: float) -> None:
        if self._links_up is None or now - self._started_at < LINK_GRACE_S:
            return
        linked = set(self._links_up())
        candidates = [n for n in self._servers if n not in self._down and n not in linked]
        # Only a server last seen by an earlier master, or silent for longer than a live link
        # may be (its link dropped and the store missed the "down"): one seen since registered
        # with this master, and its link may not be listed yet.
        seen_since = max(self._started_at, now - RECEIVE_TIMEOUT_S)
        stale = [
            n
            for n in candidates
            if self.store.set_server_state(n, "down", now, unless_seen_since=seen_since)
        ]
        for node_id in stale:
            logger.warning(
                "%s is stored up but its agent has not reconnected: marked it down",
                self._name(node_id),
            )
        if stale:
            self.topology_changed("agents not reconnected after the master restarted")

    def _fail_unreachable(self, now: float) -> None:
        with self._lock:
            due = [
                (key, since)
                for key, since in self._unreachable_since.items()
                if now - since >= self._fail_after(key[0])
            ]
        for (mapping_id, node_id), since in due:
            reason = "down" if node_id in self._down else "unreachable"
            reason = f"{reason} for {now - since:.0f} s"
            if self.store.routing.mark_failed(mapping_id, node_id, now, reason):
                logger.error(
                    "mapping %s: target %s failed (%s); it is left out until it recovers",
                    mapping_id,
                    self._name(node_id),
                    reason,
                )
                self.events.publish(
                    EventType.TARGET_FAILED,
                    mapping_id=mapping_id,
                    node_id=node_id,
                    target=self._name(node_id),
                    reason=reason,
                )
        if due:
            self._reload_failed()
            self.refresh("targets failed", push=True)

    def _fail_after(self, mapping_id: int) -> float:
        settings = self._settings.get(mapping_id) or RoutingSettings(mapping_id=mapping_id)
        return settings.fail_after_s

    def _reload_failed(self) -> None:
        failed: dict[int, dict[str, FailedTarget]] = {}
        for f in self.store.routing.failed():
            failed.setdefault(f.mapping_id, {})[f.node_id] = f
        running = {j.id: j for j in self.store.routing.running_recoveries()}
        with self._lock:
            self._failed, self._recoveries = failed, running
            self._unreachable_since = {
                k: v for k, v in self._unreachable_since.items() if k[1] not in failed.get(k[0], {})
            }
            self._version += 1

    def _recover_due(self, now: float) -> None:
        with self._lock:
            candidates = [f for per in self._failed.values() for f in per.values()]
        started = False
        for f in candidates:
            settings = self._settings.get(f.mapping_id) or RoutingSettings(mapping_id=f.mapping_id)
            policy = settings.policy_for(f.node_id)
            if policy.policy == "manual":
                continue
            if not self._back(f, now):
                if f.next_recovery_at is not None:
                    self.store.routing.set_next_recovery(f.mapping_id, f.node_id, None)
                    self._reload_failed()
                continue
            if policy.policy == "reserved" and not self._reserved_due(f, policy.schedule, now):
                continue
            self._start(f.mapping_id, f.node_id, policy.policy, now)
            started = True
        if started:
            self.refresh("targets recovered", push=True)

    def _back(self, f: FailedTarget, now: float) -> bool:
        """Whether a failed target's server is back: up again since it failed, or up and the
        failure (e.g. hops that failed while it stayed up) older than HOP_FAILED_TTL_S."""
        if f.node_id in self._down:
            return False
        return (
            self._up_since.get(f.node_id, -1.0) >= f.failed_at
            or now - f.failed_at >= HOP_FAILED_TTL_S
        )

    def _reserved_due(self, f: FailedTarget, schedule: str, now: float) -> bool:
        if f.next_recovery_at is not None:
            return now >= f.next_recovery_at
        try:
            at = next_run(schedule, now)
        except ConfigError as exc:
            logger.error(
                "mapping %s: recovery schedule of %s: %s", f.mapping_id, self._name(f.node_id), exc
            )
            return False
        if at is None:  # an at: time already past: it is due
            return True
        self.store.routing.set_next_recovery(f.mapping_id, f.node_id, at)
        self._reload_failed()
        logger.info(
            "mapping %s: %s is back; its recovery is reserved for %s",
            f.mapping_id,
            self._name(f.node_id),
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)),
        )
        return False

    def recover(self, mapping_id: int, node_id: str) -> RecoveryJob:
        """The operator puts a failed target back now, whatever its policy.

        Raises:
            ConfigError: the target is not failed.
        """
        self._ensure_loaded()
        with self._lock:
            if node_id not in self._failed.get(mapping_id, {}):
                raise ConfigError(
                    f"{self._name(node_id)} is not a failed target of mapping {mapping_id}"
                )
        job = self._start(mapping_id, node_id, "manual", self._clock())
        self.refresh("operator recovery", push=True)
        return job

    def _start(self, mapping_id: int, node_id: str, trigger: str, now: float) -> RecoveryJob:
        job = self.store.routing.start_recovery(mapping_id, node_id, trigger, now)
        logger.info(
            "mapping %s: recovery of %s started (%s), from seq %s to %s",
            mapping_id,
            self._name(node_id),
            trigger,
            job.from_seq,
            job.goal_seq,
        )
        self.events.publish(
            EventType.RECOVERY_STARTED,
            mapping_id=mapping_id,
            node_id=node_id,
            target=self._name(node_id),
            trigger=trigger,
            job_id=job.id,
            from_seq=job.from_seq,
            goal_seq=job.goal_seq,
        )
        self._reload_failed()
        return job

    def _finish_recoveries(self, now: float) -> None:
        with self._lock:
            running = list(self._recoveries.values())
        if running:  # their goals as stored now: a new source journal lowers them (_journals)
            running = self.store.routing.running_recoveries()
        finished = False
        for job in running:
            marks = {
                w.target: w.seq
                for w in self.store.watermarks(job.mapping_id)
                if w.source == self._source_of(job.mapping_id)
            }
            mark = marks.get(job.target_node, 0)
            if mark < job.goal_seq:
                continue
            self.store.routing.finish_recovery(job.id, "done", now, f"watermark {mark}")
            logger.info(
                "mapping %s: %s recovered (watermark %s)",
                job.mapping_id,
                self._name(job.target_node),
                mark,
            )
            self.events.publish(
                EventType.TARGET_RECOVERED,
                mapping_id=job.mapping_id,
                node_id=job.target_node,
                target=self._name(job.target_node),
                job_id=job.id,
                watermark=mark,
                duration_s=now - job.started_at,
            )
            finished = True
        if finished:
            self._reload_failed()
