"""The agent supervisor: identity, peer server, control link, and the mappings it runs.

An assignment from the master (versioned by epoch) says which folders this agent is the
source or a target of, and each mapping's routing table. The agent starts a SourceMapping plus
one TargetLink per child in the table for each source folder, and a TargetFolder for each
target folder, with a RelayFeed and one RelayLink per child where the table makes it a relay.
A re-plan (new routes or targets) changes links in place; a mapping whose spec otherwise
changed is restarted, one that disappeared is stopped. The last assignment is kept on disk so the
agent resumes its work at once after a restart, even while the master is down; a master that
refuses this node (revoked) stops it (agent/_stand_down.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from relaysync._util.addresses import (
    is_unspecified,
    join_address,
)
from relaysync._util.dir_lock import lock_data_dir
from relaysync._util.supervise import Serve, supervise
from relaysync.auth.validity import check_current, rejoin_remedy, seconds_left, watch_expiry
from relaysync.config.load import split_address
from relaysync.config.schema import AgentConfig
from relaysync.constants import (
    TASK_RETRY_MAX_S,
    TASK_RETRY_MIN_S,
)
from relaysync.errors import FolderRefused, JoinRefused, LinkDown
from relaysync.monitor.collectors import Collector, sample
from relaysync.monitor.prometheus import serve_agent_metrics
from relaysync.protocol.handshake import announced_capabilities
from relaysync.protocol.messages import (
    MAX_JOURNAL_HEADS,
    Assignment,
    CommitRecord,
    CommitReport,
    HopFailed,
    JournalHead,
    MetricSample,
    MetricsReport,
    PeerInfo,
    Register,
    TargetSpec,
)
from relaysync.transfer import tls
from relaysync.transfer.link_ends import SourceFolder, TargetAddress
from relaysync.transfer.receiver import ReportFn
from relaysync.transfer.relay_feed import RelayFeed
from relaysync.transfer.sender import TargetLink
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.content_cache import ContentCache

from ._source_role import _Refused, _Running
from ._stand_down import StandDown
from .advertise import advertised_address, check_advertised, follows_route, listens_ipv4_only
from .enrollment import MasterPin, join, pin_master, reachable_control_address, read_identity
from .guard import parse_roots
from .link_options import LinkOptions
from .links import LinkSet
from .master_link import MasterLink, make_report
from .outbox import ReportOutbox
from .peer_server import PeerServer
from .report_queue import MAX_QUEUED_REPORT_BYTES
from .source import SourceMapping
from .state_sweep import states_kept, sweep_states

logger = logging.getLogger(__name__)


class AgentService(StandDown):
    """Runs one agent until cancelled."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.identity = tls.Identity.in_directory(self.data_dir / "identity")
        self.allowed_roots = parse_roots(cfg.allowed_roots)  # a typo stops the agent at start
        self.target_symlinks = cfg.target_symlinks
        self.node_id = ""
        self.sources: dict[int, _Running] = {}
        self.content_cache = ContentCache()  # small files read to hash, shared by the sources
        self.refused_sources: dict[int, _Refused] = {}  # by mapping id: a source folder refused
        self.targets: dict[int, TargetFolder] = {}
        self.relays: dict[int, tuple[RelayFeed, LinkSet]] = {}  # mappings this agent relays on
        # Folders agent/guard.py refused, with the parents that may hear why (peer_server.py).
        self.refused: dict[int, tuple[FolderRefused, frozenset[str]]] = {}
        self._refusals_logged: dict[tuple[int, str], str] = {}  # (mapping, role) -> why
        self.peers: dict[str, PeerInfo] = {}
        self._link_options = LinkOptions(cfg)
        self.epoch = -1
        self.link: MasterLink | None = None
        self._tg: TaskGroup | None = None
        self._server: PeerServer | None = None
        self._assign_lock = anyio.Lock()
        self._cert_pem = b""  # read at start: its expiry is a monitoring figure
        self._collector: Collector | None = None  # set while the figures are sent

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        capabilities = announced_capabilities(
            self.cfg.capabilities
        )  # a typo stops us before joining
        if self.cfg.advertise_host and not is_unspecified(self.cfg.advertise_host):
            check_advertised(join_address(self.cfg.advertise_host, 1))  # before joining
        # before the join or anything else writes into it: another agent there stops this one
        lock = await anyio.to_thread.run_sync(lock_data_dir, self.data_dir, "agent")
        with lock:
            await self._serve(capabilities, task_status)

    async def _serve(self, capabilities: tuple[str, ...], task_status: TaskStatus[int]) -> None:
        pin = await anyio.to_thread.run_sync(self._ensure_identity)
        self.node_id = self.identity.node_id
        host, port = split_address(self.cfg.listen)
        self._server = server = PeerServer(
            host=host,
            port=port,
            ctx=tls.server_context(self.identity),
            node_id=self.node_id,
            name=self.cfg.name,
            folders=self.targets.get,
            reporter=self._reporter,
            relays=self._relay_feed,
            refuse=frozenset(n.strip() for n in self.cfg.refuse_peers.split(",") if n.strip()),
            capabilities=capabilities,
            refusals=self.refused.get,
        )
        outbox, replayed = await self._open_outbox()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                peer_port = await tg.start(server.serve)
                control = reachable_control_address(pin.control_address, self.cfg.master_url)
                advertise = await advertised_address(
                    self.cfg.advertise_host, host, peer_port, control
                )
                self.link = MasterLink(
                    control_address=control,
                    ctx=tls.client_context(self.identity),
                    master_node_id=pin.node_id,
                    on_master_pinned=partial(pin_master, self.identity),
                    on_refused=self.stand_down,
                    identity_dir=str(self.identity.key_path.parent),
                    node_id=self.node_id,
                    name=self.cfg.name,
                    register=Register(
                        name=self.cfg.name,
                        region=self.cfg.region,
                        group=self.cfg.group,
                        peer_address=advertise,
                    ),
                    on_assignment=self.apply_assignment,
                    advertise_route_port=peer_port
                    if follows_route(self.cfg.advertise_host, host)
                    else None,
                    advertise_route_ipv4_only=listens_ipv4_only(host),
                    capabilities=capabilities,
                    outbox=outbox,
                    replayed=replayed,
                    certificate=self._cert_pem,
                    outbox_max_bytes=self.cfg.report_outbox_max_mb * 1024 * 1024,
                )
                await self._apply_saved()
                tg.start_soon(self._supervised, self.link.serve, "control link to the master")
                tg.start_soon(self._watch_certificate)
                await tg.start(self._supervised, self._serve_monitoring, "monitoring")
                logger.info(
                    "agent %s (node %s) serving peers on %s",
                    self.cfg.name,
                    self.node_id[:16],
                    advertise,
                )
                task_status.started(peer_port)
        finally:
            if outbox is not None:
                outbox.close()

    async def _open_outbox(self) -> tuple[ReportOutbox | None, list[CommitReport]]:
        """The commit reports' outbox and what a previous run left in it (None: memory only)."""
        outbox = ReportOutbox(self.data_dir / "outbox", self.node_id)
        try:
            opened = partial(outbox.open, MAX_QUEUED_REPORT_BYTES)  # the rest is read as it goes
            return outbox, await anyio.to_thread.run_sync(opened)
        except OSError as exc:
            logger.error(
                "report outbox %s: cannot open (%s); commit reports are kept in memory only",
                outbox.directory,
                exc,
            )
            return None, []

    async def _watch_certificate(self) -> None:
        """A warning a month before this agent's certificate expires, daily (auth/validity.py)."""
        await watch_expiry(
            self.identity.cert_path,
            f"this agent ({self.cfg.name})",
            rejoin_remedy(self.identity.key_path.parent),
        )

    def _ensure_identity(self) -> MasterPin:
        """Join if this agent has no identity yet; refuse to start on an out-of-date one.

        Raises:
            CertificateExpired, CertificateNotYetValid: every peer and the master would refuse it.
            IdentityUnusable: a saved identity that is incomplete or trusts more than one CA.
        """
        if self.identity.exists():
            pin = read_identity(self.identity)
        elif not self.cfg.token:
            raise JoinRefused("this agent has no certificate yet and no --token was given")
        else:
            pin = join(self.cfg, self.identity)
        self._cert_pem = self.identity.cert_path.read_bytes()
        check_current(
            self._cert_pem,
            f"this agent ({self.identity.cert_path})",
            rejoin_remedy(self.identity.key_path.parent),
        )
        return pin

    @staticmethod
    async def _supervised(
        serve: Serve, name: str, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """A side task: a failure after it started is logged and it starts again with backoff,
        so it costs that task a while, never the agent (fatal only before it is ready)."""
        await supervise(
            serve,
            name=name,
            min_delay_s=TASK_RETRY_MIN_S,
            max_delay_s=TASK_RETRY_MAX_S,
            task_status=task_status,
        )

    # --- assignments ---

    async def _apply_saved(self) -> None:
        """Resume the last assignment at once; one that cannot be applied (a bug) is logged and
        the master's next one replaces it, instead of ending the agent at every start."""
        saved = self._load_assignment()
        if saved is None:
            return
        try:
            await self.apply_assignment(saved, persist=False)
        except Exception:  # cancellation is no Exception: it goes through
            logger.exception("the saved assignment could not be applied; waiting for the master's")

    def _assignment_path(self) -> Path:
        return self.data_dir / "assignment.msgpack"

    def _load_assignment(self) -> Assignment | None:
        try:
            return msgspec.msgpack.decode(self._assignment_path().read_bytes(), type=Assignment)
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    async def apply_assignment(self, assignment: Assignment, *, persist: bool = True) -> None:
        async with self._assign_lock:
            if persist:  # from the master: it takes this node (again)
                self.taken_again()
                tmp = self._assignment_path().with_suffix(".tmp")
                tmp.write_bytes(msgspec.msgpack.encode(assignment))
                tmp.replace(self._assignment_path())
            self.peers = {p.node_id: p for p in assignment.peers}
            wanted_sources = {
                m.mapping_id: m
                for m in assignment.mappings
                if m.source_node == self.node_id and m.enabled
            }
            wanted_targets = {
                m.mapping_id: m
                for m in assignment.mappings
                if any(t.node_id == self.node_id for t in m.targets) and m.enabled
            }
            self._refusals_logged = {
                k: v
                for k, v in self._refusals_logged.items()
                if k[0] in (wanted_targets if k[1] == "target" else wanted_sources)
            }
            await self._apply_targets(wanted_targets)
            await self._apply_sources(wanted_sources)
            await anyio.to_thread.run_sync(
                sweep_states, self.data_dir, states_kept(assignment, self.node_id), time.time()
            )
            self.epoch = assignment.epoch
            logger.info(
                "running assignment epoch %s: %s source, %s target folders",
                assignment.epoch,
                len(self.sources),
                len(self.targets),
            )

    def _make_link(
        self,
        source: SourceFolder | RelayFeed,
        mapping_id: int,
        target: TargetSpec,
        kind: type[TargetLink] = TargetLink,
        *,
        signatures: bool = True,
    ) -> TargetLink:
        peer = self.peers.get(target.node_id)
        label = peer.name if peer else target.node_id[:16]
        address = partial(self._peer_address, target.node_id)
        running = (
            self.sources.get(mapping_id) if signatures else None
        )  # relays forward as they got it
        override = running.spec.transfer_override if running is not None else ""
        own = source if signatures and isinstance(source, SourceMapping) else None
        options = self._link_options.for_target(
            target, own.signatures if own is not None else None, override
        )
        options.content = own.content if own is not None else None
        dial = TargetAddress(target.node_id, label, address)
        return kind(
            source,  # type: ignore[arg-type]
            dial,
            tls.client_context(self.identity),
            node_id=self.node_id,
            name=self.cfg.name,
            compare_interval_s=self.cfg.compare_interval_s,
            options=options,
            on_failure=partial(self._hop_failed, mapping_id, dial),
            route_epoch=partial(self._route_epoch, mapping_id),
            erase=not self._in_job(mapping_id),
        )

    def _in_job(self, mapping_id: int) -> bool:
        """Whether the mapping is a member of an N:M job (its targets hold other sources' files)."""
        running = self.sources.get(mapping_id)
        if running is not None:
            return bool(running.spec.conflict)
        folder = self.targets.get(mapping_id)
        return folder is not None and bool(folder.conflict)

    def _route_epoch(self, mapping_id: int) -> int:
        """The routing epoch this agent runs for the mapping (as a source, else as a target)."""
        running = self.sources.get(mapping_id)
        if running is not None:
            return running.spec.route_epoch
        folder = self.targets.get(mapping_id)
        return folder.route_epoch if folder is not None else 0

    def _hop_failed(
        self, mapping_id: int, dial: TargetAddress, child: str, error: str, attempts: int
    ) -> None:
        """Tell the master a hop of ours failed; it re-plans around it after repeated failures
        (not if the address dialled is one the child has left)."""
        if self.link is not None:
            self.link.notify(
                HopFailed(
                    mapping_id=mapping_id,
                    child=child,
                    error=error,
                    attempts=attempts,
                    address=dial.dialled,
                )
            )

    def _peer_address(self, node_id: str) -> str:
        peer = self.peers.get(node_id)
        if peer is None or not peer.address:
            raise LinkDown(node_id[:16], "the master has not told its address yet")
        return peer.address

    # --- monitoring ---

    async def _serve_monitoring(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._collector = collector = Collector(folders=self._folders, own=self._own_figures)
        assert self.link is not None
        async with anyio.create_task_group() as tg:
            if self.cfg.metrics_listen:
                await tg.start(
                    partial(serve_agent_metrics, collector, self.cfg.name, self.cfg.metrics_listen)
                )
            await tg.start(
                partial(collector.serve, self._send_figures, interval_s=self.cfg.metrics_interval_s)
            )
            task_status.started()

    def _send_figures(self, report: MetricsReport) -> None:
        """Send the figures with the journal head of each mapping this agent is the source of
        (the master's lag figures need it when no target reports: every target down) and its
        sources that cannot run (the master's status shows why)."""
        assert self.link is not None
        self.link.send_metrics(
            msgspec.structs.replace(
                report,
                journal_heads=self._journal_heads(),
                source_failures=self.source_failures(),
            )
        )

    def _figures_soon(self) -> None:
        """A source began or stopped failing: send the figures now, not at the next interval."""
        if self._collector is not None:
            self._collector.report_soon()

    def _journal_heads(self) -> tuple[JournalHead, ...]:
        heads = [
            JournalHead(
                mapping_id=mapping_id,
                seq=r.source.journal.last_seq,
                journal_id=r.source.journal.journal_id,
            )
            for mapping_id, r in sorted(self.sources.items())
            if r.source is not None
        ]
        return tuple(heads[:MAX_JOURNAL_HEADS])

    def _folders(self) -> list[str]:
        return [r.spec.source_path for r in self.sources.values()] + [
            str(t.root) for t in self.targets.values()
        ]

    def _own_figures(self) -> list[MetricSample]:
        links = [link for r in self.sources.values() if r.links for link in r.links.links]
        links += [link for _, relay_links in self.relays.values() for link in relay_links.links]
        out = [
            sample("links_connected", sum(link.connected for link in links)),
            sample("links_total", len(links)),
            sample("peer_bytes_sent", sum(link.bytes_sent for link in links)),
            sample("master_link_connected", bool(self.link and self.link.connected)),
        ]
        if self.link is not None:
            # commit reports the master has not taken (it is down: they wait, on disk), and
            # those dropped past the queue's bound (their records miss in the job log and in
            # the purges): were only in this agent's log
            out.append(sample("commit_reports_pending", self.link.reports.pending))
            out.append(sample("commit_reports_dropped", self.link.reports.dropped))
            if self.link.reports.outbox is not None:  # against report_outbox_max_mb
                out.append(sample("commit_outbox_bytes", self.link.reports.outbox.size_bytes))
        if self._cert_pem:  # an operator's threshold (cert_expires_in_s < 2592000) alerts ahead
            out.append(sample("cert_expires_in_s", seconds_left(self._cert_pem)))
        for refused in self.refused_sources.values():  # its folder refused by agent/guard.py
            out.append(sample("source_failing", 1, mapping=refused.name))
        for r in self.sources.values():
            # 1 while the mapping's source cannot run (its folder, its state): an operator's
            # threshold on it alerts, and resolves when a retry starts the source
            out.append(sample("source_failing", r.failing, mapping=r.spec.name))
            if r.source is not None:
                out.append(sample("journal_backlog", r.source.backlog(), mapping=r.spec.name))
                # the entries whose deletes the mass-delete guard holds for an operator (0: none)
                out.append(sample("deletes_held", r.source.deletes_held, mapping=r.spec.name))
                # ... and those it defers until their delete run is judged (30 s at most)
                out.append(
                    sample("deletes_deferred", r.source.deletes_deferred, mapping=r.spec.name)
                )
        return out

    # --- reports ---

    def _reporter(self, folder: TargetFolder, journal_id: str = "") -> ReportFn:
        """Report the commits of a session that receives the source's journal `journal_id`."""

        def report(watermark: int, records: Sequence[CommitRecord]) -> None:
            if self.link is None:
                return
            message = make_report(
                folder.mapping_id,
                folder.source_node,
                self.node_id,
                watermark,
                tuple(records),
                folder.route,
                journal_id,
            )
            # on disk before this returns (and the caller saves its watermark), with no wait
            # for the event loop: the link's queue takes reports from any thread
            self.link.report(message)
            if folder.durable:  # safe: the reports outlive a power loss, as the files do
                try:
                    self.link.sync_reports()
                except OSError as exc:  # the files are durable; only a power loss would lose these
                    logger.warning(
                        "report outbox: cannot sync (%s); a power loss may lose the last reports",
                        exc,
                    )

        return report
