"""The agent's target role: the folders it receives into, the relays on them, those it refuses.

AgentService (agent/service.py) inherits it and owns the state: the attributes declared below
are set in its __init__ and serve().
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from functools import partial
from pathlib import Path

import anyio

from relaysync.errors import FolderRefused
from relaysync.protocol.messages import MappingSpec, PeerInfo, TargetSpec, nodes_below
from relaysync.transfer.conflicts import forget_missing
from relaysync.transfer.relay import RelayLink
from relaysync.transfer.relay_feed import RelayFeed
from relaysync.transfer.sender import TargetLink
from relaysync.transfer.spool import Spool
from relaysync.transfer.staging import clean_stale_temps
from relaysync.transfer.target_folder import TargetFolder, listed_partial_files
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.target_policy import SymlinkPolicy, TargetPolicy
from relaysync.watch.watcher import FsEvent

from ._role import AgentRole
from .guard import check_folder
from .links import LinkSet, children_of, parents_of
from .peer_server import PeerServer

logger = logging.getLogger(__name__)


class TargetRole(AgentRole):
    """The target folders, relays and refusals of AgentService (a mixin: AgentService sets its state)."""

    target_symlinks: SymlinkPolicy = "safe"  # the agent's config: for a mapping's policy ""
    allowed_roots: tuple[str, ...]
    targets: dict[int, TargetFolder]
    relays: dict[int, tuple[RelayFeed, LinkSet]]
    refused: dict[int, tuple[FolderRefused, frozenset[str]]]
    peers: dict[str, PeerInfo]  # the latest assignment's: no other node may send to a folder
    _refusals_logged: dict[tuple[int, str], str]
    _server: PeerServer | None

    # --- target folders ---

    async def _apply_targets(self, wanted: dict[int, MappingSpec]) -> None:
        """Open, change or retire target folders. One that fails, for any reason, is refused
        (its parents hear why) and tried again at the next assignment: it costs that mapping,
        never the rest of the assignment, nor the agent (a saved assignment is applied again at
        every start)."""
        assert self._server is not None
        for gone in [m for m in self.refused if m not in wanted]:
            del self.refused[gone]  # in place: the peer server holds self.refused.get
        for mapping_id in list(self.targets):
            if mapping_id not in wanted:
                await self._retire_target(mapping_id)
        on_root = _mappings_by_root(wanted, self.node_id)
        for mapping_id, spec in wanted.items():
            try:
                await self._apply_target(mapping_id, spec, on_root)
            except Exception as exc:  # cancellation is no Exception: it goes through
                await self._target_failed(spec, exc)

    async def _apply_target(
        self, mapping_id: int, spec: MappingSpec, on_root: dict[Path, list[int]] | None = None
    ) -> None:
        """Open, update or refuse the folder of one mapping; `on_root`: the mappings assigned
        each folder (`_mappings_by_root`; None: this one only)."""
        assert self._server is not None
        existing = self.targets.get(mapping_id)
        path = _own_target(spec, self.node_id).path
        # A new policy reopens the folder: its start-up scan reads the disk through it, so a
        # mode another mask made is found and sent again (the sessions end, as they must: they
        # hold the old one). So do new filters: a file it holds that they no longer exclude
        # is scanned into its manifest, and the next comparison removes it if the source has
        # none (kept, it stayed until the agent restarted).
        same_place = (
            existing is not None
            and existing.root == Path(path)
            and existing.source_node == spec.source_node
            and existing.policy == self._policy(spec)
        )
        # (an N:M member's manifest holds its own source's versions only: it is not rescanned)
        if (
            existing is not None
            and same_place
            and (existing.filters == _filters(spec) or spec.conflict)
        ):
            existing.durable = spec.durability == "safe"
            existing.keep_versions = _versions_here(spec, self.node_id)
            secret = _own_target(spec, self.node_id).link_secret
            changed, existing.link_secret = secret != existing.link_secret, secret
            # The secret and the parent it belongs to change together, before the restart
            # awaits: the old parent reconnecting meanwhile met the new hop's secret under the
            # old table's parents and epoch, and was logged as failing authentication.
            self._set_routes(existing, spec)
            await self._server.end_session_unless_from(mapping_id, self.peers)
            if changed:
                # A plain session is authenticated only when it opens: one opened under the
                # old secret (or while the link was trusted at all) must not outlive it.
                await self._server.restart_session(mapping_id, "this link's secret changed")
            await self._apply_relay(spec, existing)
            return
        if existing is not None:  # new filters alone: the reopened folder resumes its partials
            await self._retire_target(mapping_id, keep_partials=same_place)
        if self._refuse(spec, path, "target"):
            return
        siblings = [f for f in self.targets.values() if f.root == Path(path)]
        others = [m for m in (on_root or {}).get(Path(path), ()) if m != mapping_id]
        folder = await anyio.to_thread.run_sync(
            self._open_target, spec, Path(path), siblings, others
        )
        self._set_routes(folder, spec)
        self.targets[mapping_id] = folder
        await self._apply_relay(spec, folder)

    async def _retire_target(self, mapping_id: int, *, keep_partials: bool = False) -> None:
        """Stop the mapping's relay and stop serving its folder (`keep_partials`: for the same
        folder reopened); a failure to let go of it (its partials, its manifest) is logged: the
        folder is out of service either way."""
        assert self._server is not None
        self._stop_relay(mapping_id)
        folder = self.targets.pop(mapping_id, None)
        if folder is None:
            return
        try:
            await self._server.retire(folder, keep_partials=keep_partials)
        except Exception:  # cancellation is no Exception: it goes through
            logger.exception("target of mapping %s: retiring it failed", mapping_id)

    async def _target_failed(self, spec: MappingSpec, exc: Exception) -> None:
        """Refuse a target that could not be opened or changed (a full disk, a corrupt manifest,
        a spool in the way, a bug): out of service, its parents hear why, the next assignment
        tries it again."""
        await self._retire_target(spec.mapping_id)
        if isinstance(exc, OSError):
            why = f"cannot open it: {exc.strerror or exc} (fix it; the next assignment retries)"
        else:  # not the disk: keep the traceback, once per reason like the refusal
            why = f"cannot open it: {type(exc).__name__}: {exc} (the next assignment retries)"
            if self._refusals_logged.get((spec.mapping_id, "target")) != why:
                logger.error("target of mapping %s failed", spec.mapping_id, exc_info=exc)
        path = next((t.path for t in spec.targets if t.node_id == self.node_id), "")
        self._refused_target(spec, FolderRefused("target", path, spec.mapping_id, why))

    def _set_routes(self, folder: TargetFolder, spec: MappingSpec) -> None:
        """Who may stream to the folder now: its parent in this routing epoch, if it is a peer.

        The master names no revoked node as a peer: the source a spec still names, revoked,
        feeds its targets no more (peers have no revocation list; this is the one they read).
        """
        folder.parents = self._parents(spec)
        folder.route_epoch = spec.route_epoch
        # A member that is no peer (revoked) is refused as unknown, not told its table is stale.
        folder.members = _members(spec).intersection(self.peers)

    def _parents(self, spec: MappingSpec) -> frozenset[str]:
        return parents_of(spec, self.node_id).intersection(self.peers)

    def _open_target(
        self,
        spec: MappingSpec,
        root: Path,
        siblings: Sequence[TargetFolder] = (),
        others: Collection[int] = (),
    ) -> TargetFolder:
        """Open a target folder; members of an N:M job share the root with their siblings (those
        open) and `others` (the mappings assigned the same root, open or not)."""
        root.mkdir(parents=True, exist_ok=True)
        state = self.data_dir / "targets" / str(spec.mapping_id)
        state.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(state / "manifest.db")
        folder = TargetFolder(
            mapping_id=spec.mapping_id,
            source_node=spec.source_node,
            root=root,
            manifest=manifest,
            durable=spec.durability == "safe",
            link_secret=_own_target(spec, self.node_id).link_secret,
            keep_versions=_versions_here(spec, self.node_id),
            conflict=spec.conflict,
            policy=self._policy(spec),
            filters=_filters(spec),
        )
        if not siblings:  # never another member's temp files while it receives
            _clean_stale_temps(self.data_dir, folder, others)
        if spec.conflict:
            folder.lock = siblings[0].lock if siblings else folder.lock
            folder.tree_changes = siblings[0].tree_changes if siblings else folder.tree_changes
            folder.owner_of = partial(self._owner_of, folder)
            forget_missing(folder)  # its manifest holds its own source's versions only: no rescan
            return folder
        recorder = ChangeRecorder(
            root,
            manifest,
            PathFilter(spec.include, spec.exclude, root=root),
            hard_links=False,
            policy=folder.policy,
        )
        recorder.detect_and_apply([FsEvent(kind="rescan", path="")])
        return folder

    def _policy(self, spec: MappingSpec) -> TargetPolicy:
        """What the mapping lets land in its folder here; its symlink policy "" is this agent's."""
        return TargetPolicy(
            symlinks=spec.symlinks or self.target_symlinks, mode_mask=spec.mode_mask
        )

    def _owner_of(self, folder: TargetFolder, path: str, size: int, mtime_ns: int) -> str:
        """The source of another member of folder's N:M job whose committed version is on disk."""
        for other in list(self.targets.values()):
            if other is folder or other.root != folder.root or not other.conflict:
                continue
            try:
                entry = other.manifest.get(path)
            except Exception:  # noqa: BLE001 - a member being retired: its manifest is closed
                continue
            if entry is not None and (entry.size, entry.mtime_ns) == (size, mtime_ns):
                return other.source_node
        return ""

    # --- refusals ---

    def _refuse(self, spec: MappingSpec, path: str, role: str) -> bool:
        """Whether agent/guard.py refuses the folder; a refused target tells its parents why
        when they connect (the source reports it to the master as a failed hop)."""
        try:
            check_folder(
                path,
                role=role,
                mapping_id=spec.mapping_id,
                data_dir=self.data_dir,
                allowed_roots=self.allowed_roots,
            )
        except (FolderRefused, ValueError) as exc:  # ValueError: a NUL byte the master let by
            refusal = (
                exc
                if isinstance(exc, FolderRefused)
                else FolderRefused(role, path, spec.mapping_id, f"not a usable path: {exc}")
            )
            if role == "target":
                self._refused_target(spec, refusal)
            else:
                self._log_refusal(spec, role, refusal)
            return True
        self._refusals_logged.pop((spec.mapping_id, role), None)
        if role == "target":
            self.refused.pop(spec.mapping_id, None)
        return False

    def _log_refusal(self, spec: MappingSpec, role: str, exc: FolderRefused) -> None:
        if self._refusals_logged.get((spec.mapping_id, role)) != str(exc):
            logger.error("%s", exc)  # once per folder and reason, not at every assignment
        self._refusals_logged[(spec.mapping_id, role)] = str(exc)

    def _refused_target(self, spec: MappingSpec, exc: FolderRefused) -> None:
        """Log the refusal once; the target's parents hear why when they connect."""
        self._log_refusal(spec, "target", exc)
        self.refused[spec.mapping_id] = (exc, self._parents(spec))

    # --- relaying ---

    def _relay_feed(self, mapping_id: int) -> RelayFeed | None:
        relay = self.relays.get(mapping_id)
        return relay[0] if relay is not None else None

    async def _apply_relay(self, spec: MappingSpec, folder: TargetFolder) -> None:
        """Start, change or stop this agent's relay role for the mapping, per the routing table."""
        assert self._server is not None
        children = children_of(spec, self.node_id)
        relay = self.relays.get(spec.mapping_id)
        if relay is not None and relay[0].folder is not folder:
            self._stop_relay(spec.mapping_id)
            relay = None
        if not children:
            if relay is not None:
                self._stop_relay(spec.mapping_id)
                await self._server.restart_session(spec.mapping_id)  # it must stop spooling
            return
        if relay is None:
            assert self._tg is not None
            state = self.data_dir / "targets" / str(spec.mapping_id) / "spool"
            spool = await anyio.to_thread.run_sync(Spool, state)
            feed = await anyio.to_thread.run_sync(RelayFeed, folder, spool)
            links = LinkSet(
                self._tg,
                partial(self._make_relay_link, feed),
                label=f"relay of mapping {spec.mapping_id}",
            )
            feed.on_route_change = partial(links.restart, dict(children))
            relay = (feed, links)
            self.relays[spec.mapping_id] = relay
            await self._server.restart_session(
                spec.mapping_id
            )  # the next one spools for the children
        feed, links = relay
        feed.on_route_change = partial(links.restart, dict(children))
        feed.children = frozenset(children)
        feed.routes = spec.routes
        feed.marks = {
            n: w for n, w in feed.marks.items() if n in nodes_below(spec.routes, self.node_id)
        }
        links.reconcile(children)

    def _stop_relay(self, mapping_id: int) -> None:
        relay = self.relays.pop(mapping_id, None)
        if relay is not None:
            relay[1].close()

    def _make_relay_link(self, feed: RelayFeed, target: TargetSpec) -> TargetLink:
        return self._make_link(feed, feed.mapping_id, target, RelayLink, signatures=False)


def _members(spec: MappingSpec) -> frozenset[str]:
    """Every node taking part in the mapping: its source, its targets, the nodes of its routes."""
    return frozenset(
        {
            spec.source_node,
            *(t.node_id for t in spec.targets),
            *(n for h in spec.routes for n in (h.parent, h.child)),
        }
    )


def _clean_stale_temps(data_dir: Path, folder: TargetFolder, others: Collection[int]) -> None:
    """Remove what a crash left of temp files under the folder's root, but the partials kept
    to be resumed: its own and those of the other mappings assigned that root (the members
    of its N:M job, opened after it). A mapping no longer assigned there keeps none."""
    keep = set(folder.partial_files())
    for mapping_id in others:
        db = data_dir / "targets" / str(mapping_id) / "manifest.db"
        if not db.exists():
            continue  # never opened here: it has no partials
        try:
            manifest = Manifest(db)
            try:
                keep |= listed_partial_files(folder.root, mapping_id, manifest)
            finally:
                manifest.close()
        except Exception as exc:  # noqa: BLE001 - any of them may be its: remove none
            logger.warning(
                "target folder %s: cannot read which partials mapping %s keeps there (%s);"
                " stale temporary files there are left until the agent starts again",
                folder.root,
                mapping_id,
                exc,
            )
            return
    clean_stale_temps(folder.root, keep=frozenset(keep))


def _filters(spec: MappingSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(spec.include), tuple(spec.exclude)


def _mappings_by_root(wanted: dict[int, MappingSpec], node_id: str) -> dict[Path, list[int]]:
    """The mappings this agent is assigned as a target, by the folder they receive into (the
    members of an N:M job may share one)."""
    on_root: dict[Path, list[int]] = {}
    for mapping_id, spec in wanted.items():
        on_root.setdefault(Path(_own_target(spec, node_id).path), []).append(mapping_id)
    return on_root


def _versions_here(spec: MappingSpec, node_id: str) -> int:
    """How many previous versions this target keeps (0 unless it is one of the chosen targets)."""
    chosen = not spec.keep_versions_on or node_id in spec.keep_versions_on
    return spec.keep_versions if chosen else 0


def _own_target(spec: MappingSpec, node_id: str) -> TargetSpec:
    return next(t for t in spec.targets if t.node_id == node_id)
