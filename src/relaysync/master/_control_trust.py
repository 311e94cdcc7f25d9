"""What the master believes of an agent's control link (a mixin of ControlServer,
master/control.py): a message about a mapping only from a node with its part in it, and a commit
report only with byte figures the job log can hold (`_believed`; the rest counted in `refused`,
logged, a forged report an `alarm` event) and its route only if it names servers, the source
first (`_route_believed`), its records only with paths inside the mapping's root
(`_paths_believed`), the journal heads a source reports with its figures
(`_take_heads`), and a word in the log on a node whose certificate runs out soon
(`warn_if_expiring`). `AgentLink` is one link's state."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import msgspec

from relaysync.auth.validity import EXPIRY_WARNING_S, REJOIN_AGENT, format_time
from relaysync.errors import StoreError
from relaysync.master._report_bounds import out_of_bounds
from relaysync.master.events import EventBus, EventType
from relaysync.master.mapping_members import MappingMembers
from relaysync.master.report_acks import ReportAcks
from relaysync.master.report_paths import with_safe_paths
from relaysync.master.route_names import route_fault
from relaysync.master.store.store import Store
from relaysync.master.store.types import ServerInfo
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import (
    MAX_JOURNAL_HEADS,
    CommitReport,
    HopFailed,
    JournalHead,
    MassDeleteHeld,
    ReleaseReport,
)

logger = logging.getLogger("relaysync.master.control")  # one logger for the control server's words

# Per link: one report's worth. Past it a link's further refused ids are checked again at each
# report, in a read transaction only: a hostile agent cannot grow the master's memory.
MAX_REFUSED_HEADS_KEPT = MAX_JOURNAL_HEADS
MAX_HEADS_ERRORS_LOGGED = 100  # distinct unexpected errors of the heads writer logged in full
HEADS_FAILED_LOG_S = 60.0  # a heads write failing again is logged at most this often


@dataclass
class AgentLink:
    node_id: str
    name: str
    framed: FramedStream
    epoch_sent: int = -1
    epoch_acked: int = -1
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    refused_figures: set[str] = field(default_factory=set)  # each is logged once per link
    acks: ReportAcks | None = None  # the agent keeps its reports until told they are taken
    reading: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # cancelled by stop
    push_due: anyio.Event = field(default_factory=anyio.Event)  # the config changed: push anew
    # journal heads the store took, by mapping: (seq, journal id)
    heads: dict[int, tuple[int, str]] = field(default_factory=dict)
    # Mappings whose head the store refused (not this node's): not sent to the store again
    # until the mappings change (`_forget_heads`), at most MAX_REFUSED_HEADS_KEPT of them.
    refused_heads: set[int] = field(default_factory=set)
    # Mappings whose source failures it sent are not its own: likewise (master/_control_sources.py).
    refused_failures: set[int] = field(default_factory=set)


@dataclass
class HeadsFailures:
    """Failed heads writes not logged yet, and when the last word on them was logged."""

    logged_at: float = float("-inf")  # time.monotonic()
    since: int = 0


class ControlTrust:
    """The checks of ControlServer on what a link may say; ControlServer sets the state."""

    refused: collections.Counter[str]
    events: EventBus
    store: Store
    links: dict[str, AgentLink]
    _members: MappingMembers
    _heads_slots: dict[str, tuple[AgentLink, dict[int, tuple[int, str]]]]  # newest, by node id
    _heads_due: anyio.Event  # set when a slot is filled
    _heads_writer: anyio.CancelScope | None  # `_write_heads`' own while it runs: a stop cancels it
    _stopping: bool
    _heads_errors: set[str]  # the unexpected errors of `_write_heads` logged in full
    _heads_failures: HeadsFailures

    def _take_heads(self, link: AgentLink, heads: Sequence[JournalHead]) -> None:
        """Keep the journal heads a source sends with its figures, those changed since the
        store took this link's last ones (and not refused since the mappings last changed),
        in the link's slot for `_write_heads` (a newer report's replace them): the link's
        reading never waits on the store. A head in another journal than the one taken is
        fresh whatever its seq: the store voids what counted in the old journal."""
        known, refused = link.heads, link.refused_heads
        fresh = {
            h.mapping_id: (h.seq, h.journal_id)
            for h in heads
            if known.get(h.mapping_id) != (h.seq, h.journal_id) and h.mapping_id not in refused
        }
        if fresh:
            self._heads_slots[link.node_id] = (link, fresh)
            self._heads_due.set()

    def _forget_heads(self) -> None:
        """Mappings changed (a source moved, its old head deleted; a node became a source):
        each link's next heads are written again, or checked again, whatever it sent before."""
        for link in list(self.links.values()):
            link.heads, link.refused_heads, link.refused_failures = {}, set(), set()

    async def _write_heads(self) -> None:
        """Write the heads in the links' slots, all of them in one transaction, for as long as
        the control server runs (its own task) or until a stop. A bug costs the heads of one
        pass, not the master and every agent's link: the next figures bring them again."""
        with anyio.CancelScope() as self._heads_writer:  # made here: an event loop runs
            if self._stopping:
                return
            while True:
                await self._heads_due.wait()
                self._heads_due = anyio.Event()
                slots, self._heads_slots = list(self._heads_slots.values()), {}
                try:
                    await self._write_slots(slots)
                except Exception as exc:  # cancellation is no Exception: it ends the loop
                    self._heads_failed(exc)

    def _heads_failed(self, exc: Exception) -> None:
        """Log an unexpected error of the heads writer: in full once per distinct error (it
        may repeat at every report), briefly after that."""
        key = f"{type(exc).__name__}: {exc}"
        if key in self._heads_errors or len(self._heads_errors) >= MAX_HEADS_ERRORS_LOGGED:
            self._heads_failed_again(key)
            return
        self._heads_errors.add(key)
        logger.error("journal heads not noted: unexpected error, will retry", exc_info=exc)

    def _heads_failed_again(self, what: str) -> None:
        """Log a failed heads write at most every HEADS_FAILED_LOG_S, with how many failed
        since: every report of every agent retries while the store fails (a flood, review)."""
        failures = self._heads_failures
        failures.since += 1
        now = time.monotonic()
        if now - failures.logged_at < HEADS_FAILED_LOG_S:
            return
        logger.warning(
            "journal heads not noted (%d failed writes since the last word), will retry: %s",
            failures.since,
            what,
        )
        failures.logged_at, failures.since = now, 0

    async def _write_slots(
        self, slots: Sequence[tuple[AgentLink, dict[int, tuple[int, str]]]]
    ) -> None:
        """The store writes a head only from the mapping's source; the others are refused. A
        store failure costs these heads only: the next figures bring them again. Abandoned
        on a stop (the store's write may be stuck): the sources report their heads anew."""
        # A forget replaces the link's dict and set: what this write learnt then goes with them.
        noted = [(link, link.heads, link.refused_heads, heads) for link, heads in slots]
        wanted = {
            link.node_id: [(m, seq, journal) for m, (seq, journal) in sorted(heads.items())]
            for link, heads in slots
        }
        try:
            written = await anyio.to_thread.run_sync(
                self.store.record_source_heads, wanted, abandon_on_cancel=True
            )
        except StoreError as exc:
            self._heads_failed_again(str(exc))
            return
        for link, known, refused, heads in noted:
            taken = written.get(link.node_id, [])
            known.update((m, heads[m]) for m in taken)
            dropped = sorted(heads.keys() - set(taken))
            refused.update(dropped[: max(0, MAX_REFUSED_HEADS_KEPT - len(refused))])
            for mapping_id in dropped:
                self._refuse(
                    link,
                    "journal_head",
                    mapping_id,
                    "a journal head of a mapping it is not the source of",
                )

    async def _believed(self, link: AgentLink, message: object) -> bool:
        """Whether the link's node may say this (a report on its own part in the mapping);
        if not, the message is counted, logged and dropped."""
        match message:
            case CommitReport():
                if message.target_node != link.node_id:  # agents report their own commits only
                    self._refuse(
                        link,
                        "forged_commit_report",
                        message.mapping_id,
                        f"a commit report for target {message.target_node[:16]}",
                        alarm=True,
                    )
                    return False
                if (why := out_of_bounds(message)) is not None:
                    self._refuse(link, "commit_report_bounds", message.mapping_id, why)
                    return False
                kind = "commit_report"
                ok = await self._members.allow(
                    message.mapping_id,
                    lambda m: m[0] == message.source_node and link.node_id in m[1],
                )
            case ReleaseReport() | MassDeleteHeld():
                kind = (
                    "release_report" if isinstance(message, ReleaseReport) else "mass_delete_held"
                )
                ok = await self._members.allow(message.mapping_id, lambda m: m[0] == link.node_id)
            case HopFailed():
                kind = "hop_failed"
                ok = await self._members.allow(
                    message.mapping_id,
                    lambda m: (
                        message.child in m[1] and (link.node_id == m[0] or link.node_id in m[1])
                    ),
                )
            case _:
                return True
        if not ok:
            self._refuse(
                link, kind, message.mapping_id, f"a {type(message).__name__} it has no part in"
            )
        return ok

    def _parts_believed(self, link: AgentLink, report: CommitReport) -> CommitReport:
        """`report` with the paths (master/report_paths.py) and the route believed."""
        return self._route_believed(link, self._paths_believed(link, report))

    def _paths_believed(self, link: AgentLink, report: CommitReport) -> CommitReport:
        """`report` without records or removed paths a target cannot have applied (a path out
        of the mapping's root: master/report_paths.py); counted, logged, an alarm."""
        kept, why = with_safe_paths(report)
        if why is not None:
            what = f"{why} in a commit report (the rest of the report is kept)"
            self._refuse(link, "commit_report_path", report.mapping_id, what, alarm=True)
        return kept

    def _route_believed(self, link: AgentLink, report: CommitReport) -> CommitReport:
        """`report`, without its route (unknown, as from an agent that does not say: not
        "direct") if that is not made of node names (master/route_names.py); counted and
        logged, not refused: the commits are the target's own."""
        why = route_fault(report)
        if why is None:
            return report
        what = f"the route of a commit report, {why} (the report is kept without it)"
        self._refuse(link, "commit_report_route", report.mapping_id, what)
        return msgspec.structs.replace(report, route=())

    def _refuse(
        self, link: AgentLink, kind: str, mapping_id: int, what: str, *, alarm: bool = False
    ) -> None:
        self.refused[kind] += 1
        count = self.refused[kind]
        if count == 1 or count % 1000 == 0 or alarm:
            logger.warning(
                "dropped %s from %s on mapping %s (%s %s dropped so far)",
                what,
                link.name,
                mapping_id,
                count,
                kind,
            )
        if alarm:
            self.events.publish(
                EventType.ALARM,
                reason="forged control message",
                server=link.name,
                node_id=link.node_id,
                mapping_id=mapping_id,
                detail=what,
            )


def warn_if_expiring(info: ServerInfo) -> None:
    """The master's own word, at each control link, on a node whose certificate expires within
    EXPIRY_WARNING_S: one place for an operator to see it (the node's log says it too)."""
    if info.cert_not_after is None:
        return
    left_s = info.cert_not_after - time.time()
    if left_s < EXPIRY_WARNING_S:
        logger.warning(
            "server %s: its certificate %s %s (%s): %s",
            info.name,
            "expires" if left_s > 0 else "expired",
            format_time(dt.datetime.fromtimestamp(info.cert_not_after, dt.UTC)),
            f"in {left_s / 86400:.1f} days" if left_s > 0 else "past",
            REJOIN_AGENT,
        )
