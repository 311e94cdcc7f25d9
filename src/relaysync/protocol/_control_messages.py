"""Control-link messages (agent <-> master): assignments, reports, hop failures and metrics."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from relaysync._util.untrusted_text import CONTROL_CHARACTERS
from relaysync.constants import MAX_NAME_BYTES, MAX_PATH_BYTES
from relaysync.errors import ProtocolError
from relaysync.protocol._message_base import (
    MAX_NODE_ID,
    MAX_REMOVED_PATHS,
    MAX_REPORT_RECORDS,
    MAX_ROUTE_NODES,
    DurationMs,
    Finite,
    Int64,
    Message,
    NonNegative,
    UInt63,
    UnixTime,
    _upto,
)

# Strings the master keeps in bounded columns (master/store/models.py) are bounded on decode
# too, like the integers: a longer one is a malformed frame, never a failed store write (on
# PostgreSQL, a job log flush that failed for everyone). The bounds change no valid message's bytes.
# The receiver's op names (write, delete, mkdir, symlink, rename, attr, erase) and whatever a
# newer agent adds: a shape, not a list, so that a new op never ends an older master's link.
OpName = Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,32}\Z")]  # changes.op: VARCHAR(32)
ConflictReason = Annotated[str, msgspec.Meta(max_length=16)]  # nm_conflicts.reason: VARCHAR(16)
NodeId = Annotated[str, msgspec.Meta(max_length=MAX_NODE_ID)]  # the tables' node id columns
ServerName = Annotated[str, msgspec.Meta(max_length=MAX_NAME_BYTES)]  # servers' VARCHAR(255)
JournalId = Annotated[str, msgspec.Meta(max_length=64)]  # mapping_modes.released_journal

# --- Control link: agent <-> master ---


class Register(Message, frozen=True, tag="register"):
    """Agent -> master, after Hello: who and where it is."""

    name: ServerName
    region: ServerName
    group: ServerName
    peer_address: ServerName  # host:port where its peer server listens (master checks it)


class BandwidthWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A time-of-day bandwidth limit of a link policy (transfer/bandwidth.py `BandwidthSchedule`)."""

    days: str = ""  # "mon-fri", "sat,sun", ...; "" = every day (the day the window starts on)
    start: str = "00:00"  # HH:MM in the policy's timezone
    end: str = "24:00"  # HH:MM; earlier than start = the window runs past midnight
    bandwidth_limit_mbit: NonNegative = 0.0  # 0 = unlimited


class LinkPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a source sends to one target: the policy of their network section or server pair."""

    tls: bool = True  # off only on links the operator marks trusted (then HMAC-authenticated)
    transfer: Literal["auto", "delta", "whole"] = "auto"  # delta or dump copy; auto picks per file
    zstd_level: Int64 = 0  # 0 = no compression; chunks that do not shrink go plain anyway
    bandwidth_limit_mbit: NonNegative = 0.0  # 0 = unlimited; the limit outside every window
    windows: tuple[BandwidthWindow, ...] = ()  # the first window that holds now sets the limit
    timezone: str = ""  # IANA name the windows' times are in (zoneinfo); "" = UTC


class TargetSpec(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    path: str  # absolute folder on the target server
    policy: LinkPolicy | None = None  # None: the agent's own defaults
    link_secret: bytes = b""  # set when the policy turns TLS off: proves the source on a plain link


class RouteHop(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One edge of a mapping's distribution tree: `parent` streams the mapping's changes to `child`."""

    parent: str  # node id; the source node for a first hop
    child: str  # node id of a target (or relay) of the mapping
    level: str = (
        ""  # why the planner chose it: region-entry, group-entry, in-group, bypass-..., manual
    )


def nodes_below(routes: tuple[RouteHop, ...], node_id: str) -> frozenset[str]:
    """Every node below `node_id` in a mapping's distribution tree (none in a star).

    These are the only targets whose watermarks an `Ack` from `node_id` may carry.
    """
    below: set[str] = set()
    frontier = [node_id]
    while frontier:
        parent = frontier.pop()
        for hop in routes:
            if hop.parent == parent and hop.child not in below and hop.child != node_id:
                below.add(hop.child)
                frontier.append(hop.child)
    return frozenset(below)


class MappingSpec(msgspec.Struct, frozen=True, kw_only=True):
    mapping_id: UInt63
    name: str
    source_node: str
    source_path: str  # absolute folder on the source server
    targets: tuple[TargetSpec, ...]
    include: tuple[str, ...] = ()  # regular expressions on the relative path; empty = all
    exclude: tuple[str, ...] = ()
    durability: Literal["safe", "fast"] = "safe"
    enabled: bool = True
    mode: Literal["realtime", "manual", "reserved"] = "realtime"  # when journaled changes are sent
    release: UInt63 = (
        0  # manual/reserved: bumped by the master each time the operator or schedule says send
    )
    delete_confirm: UInt63 = (
        0  # bumped when the operator confirms a mass delete the source held back
    )
    keep_versions: UInt63 = (
        0  # synchronization and backup: previous versions kept on targets (0 = off)
    )
    keep_versions_on: tuple[str, ...] = ()  # node ids of the targets that keep them (empty = all)
    # The distribution tree (routing/planner.py): every target's parent. Empty = a star from the
    # source. Changes to it need no restart: links are added and dropped in place.
    routes: tuple[RouteHop, ...] = ()
    route_epoch: UInt63 = 0  # bumped by the master at each re-plan
    # N:M jobs: the member mappings of job `job_id` write one target tree; "newest-mtime" resolves
    # two sources writing one path (transfer/conflicts.py). "" = the source is the truth.
    conflict: str = ""
    job_id: UInt63 = 0
    # Delta or dump copy forced for every link of this mapping, over the links' policies; "" = per policy.
    transfer_override: Literal["", "auto", "delta", "whole"] = ""
    # What the targets let land (watch/target_policy.py): symlinks "safe" (none that points out
    # of the folder), "any", or "" (each target agent's `target_symlinks`, "safe" by default);
    # the permission bits removed from what they write (0o002: o-w; 0 keeps every bit).
    symlinks: Literal["", "safe", "any"] = ""
    mode_mask: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0o002


class PeerInfo(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    name: str
    address: str  # host:port of its peer server


class Assignment(Message, frozen=True, tag="assignment", omit_defaults=True):
    """Master -> agent: every mapping it takes part in, and its peers. Versioned by epoch.
    `parked` is left out of the bytes when empty (an older agent ignores it when there)."""

    epoch: UInt63
    mappings: tuple[MappingSpec, ...]
    peers: tuple[PeerInfo, ...]
    # Mappings this node is a failed target of (out of them until it recovers: master/router.py):
    # the agent keeps their state (agent/state_sweep.py). An older master sends none.
    parked: tuple[UInt63, ...] = ()

    def decoded_items(self) -> int:
        return (
            len(self.mappings)
            + len(self.peers)
            + len(self.parked)
            + sum(
                len(m.targets) + len(m.routes) + len(m.include) + len(m.exclude)
                for m in self.mappings
            )
        )


class ReleaseReport(Message, frozen=True, tag="release_report", omit_defaults=True):
    """Source agent -> master: release `release` of a manual/reserved mapping covers seqs up to `upto_seq`."""

    mapping_id: UInt63
    release: UInt63
    upto_seq: UInt63
    # The source journal `upto_seq` counts in (Journal.journal_id; "": an older agent). Another
    # one than before (the journal was recreated: seqs start again) voids what the master tied
    # to the old one's seqs; an older master ignores the field.
    journal_id: JournalId = ""


class MassDeleteHeld(Message, frozen=True, tag="mass_delete_held", omit_defaults=True):
    """Source agent -> master: a scan would delete most of a folder (an unmounted disk?): held.
    Not `resent`, it keeps the bytes it had before that field (`omit_defaults`)."""

    mapping_id: UInt63
    deletes: UInt63  # entries the held changes would remove on every target
    entries: UInt63  # entries the source knew before
    root_missing: bool
    # Sent again, as it was, when the control link comes up while the hold lasts (to a master
    # that announced CAP_HOLD_END): a master that restarted shows it again, one that has it
    # already publishes nothing.
    resent: bool = False
    # The hold's number in its agent (increasing; 0: unknown, from an older agent), which its
    # MassDeleteEnded names: a late end of an older hold never ends a newer one.
    hold: UInt63 = 0


# Why a hold ended: "paths back", "under threshold", "confirmed", "mapping removed", "mapping
# changed", "source failed"; a shape, not a list, so that a newer agent's reason never ends an
# older master's link.
HoldEndReason = Annotated[str, msgspec.Meta(pattern=r"^[a-z ]{1,32}\Z")]


class MassDeleteEnded(Message, frozen=True, tag="mass_delete_ended", omit_defaults=True):
    """Source agent -> master, to a master that announced CAP_HOLD_END: the hold MassDeleteHeld
    reported is over (`reason`), whether or not an operator confirmed it. Without `hold`, it
    keeps the bytes it had before that field (`omit_defaults`)."""

    mapping_id: UInt63
    reason: HoldEndReason
    hold: UInt63 = 0  # MassDeleteHeld.hold of the hold that ended; 0: whichever is in force


class AssignmentAck(Message, frozen=True, tag="assignment_ack"):
    epoch: UInt63


# CommitRecord.op of a target's marker for its commit reports dropped past its queue's bounds
# (agent/_lost_reports.py): seq 0, path "" (the mapping's root); what changed is not known, so
# the purger purges the mapping's sites whole (purge/planner.py)
LOST_OP = "lost"


class CommitRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One change as applied (or refused) on one target."""

    seq: UInt63  # journal sequence on the source; 0 for catch-up work outside the journal
    op: OpName
    path: str
    size: UInt63 = 0
    wire_bytes: UInt63 = 0
    ok: bool = True
    error: str = ""
    duration_ms: DurationMs = 0.0
    committed_at: UnixTime = 0.0  # unix time on the target (a file: just before its rename)
    new_path: str = ""  # a rename's new path: the purger refreshes it and what moved under it
    # N:M jobs (transfer/conflicts.py): why two sources' versions met here ("" = they did not),
    # and the other source's node id; "newer": this record's version won, otherwise it lost.
    conflict: ConflictReason = ""
    conflict_with: NodeId = ""
    changed_at: UnixTime = (
        0.0  # the op's changed_at (source clock); committed_at - changed_at = latency
    )
    # A delete, rename, erase or symlink (transfer/removal.py): what `path` was on the target
    # before the op ("f" file, "d" directory, "l" symlink; "" unknown: an older agent, or
    # nothing there) and the files and links that were under it (a rename's: their old paths,
    # and what it replaced under its new path; a link to a directory: what is under its old
    # and new target), at most MAX_REMOVED_PATHS; `removed_truncated` when there were more.
    # The purger purges them.
    kind: Literal["", "f", "d", "l"] = ""
    removed: Annotated[tuple[str, ...], _upto(MAX_REMOVED_PATHS)] = ()
    removed_truncated: bool = False


class CommitReport(Message, frozen=True, tag="commit_report", omit_defaults=True):
    """Target -> master, at once after commits: the watermark and what was applied. Fields at
    their defaults are left out of the bytes (`omit_defaults`): a report without `journal_id`
    decodes on an older master as before, which ignores the field when it is there."""

    mapping_id: UInt63
    source_node: NodeId
    target_node: NodeId
    watermark: UInt63  # every seq <= watermark is committed on the target
    records: Annotated[tuple[CommitRecord, ...], _upto(MAX_REPORT_RECORDS)]
    # names of the nodes the changes came through, source first
    route: Annotated[tuple[ServerName, ...], _upto(MAX_ROUTE_NODES)] = ()
    # The source journal the seqs count in (Journal.journal_id; "": an older agent). A seq
    # names a change only within its journal: a recreated journal counts from 1 again, and the
    # purger must not take its changes for the old one's (purge/ordering.py).
    journal_id: JournalId = ""

    def decoded_items(self) -> int:
        return len(self.records) + len(self.route) + sum(len(r.removed) for r in self.records)


class ReportsTaken(Message, frozen=True, tag="reports_taken"):
    """Master -> agent, to an agent that announced CAP_REPORT_ACK: the first `upto` commit
    reports of this session are in the job log's store or spool (they survive a kill of the
    master), so the agent may forget them. Reports are counted per session, from 1, in the
    order they were sent; an agent resends the others on its next session."""

    upto: UInt63

    def validate(self) -> None:
        if self.upto < 1:
            raise ProtocolError("reports_taken: upto must be at least 1")


class HopFailed(Message, frozen=True, tag="hop_failed"):
    """Agent -> master: this agent could not stream mapping `mapping_id` to `child` (connect or
    transfer error, or the child refused it). The master re-plans around the hop, unless the
    address dialled is not the child's latest: the child came back elsewhere (a new port) and the
    agent gets that address with its next assignment."""

    mapping_id: UInt63
    child: NodeId
    error: str
    attempts: UInt63 = 1  # consecutive failures so far
    address: ServerName = ""  # the child's address the failed session dialled ("" = not known)


# --- Monitoring ---

MAX_METRIC_SAMPLES = 4096  # one report per agent tick; thousands of mappings is already extreme
MAX_JOURNAL_HEADS = 4096  # per report; mappings past it keep the head their targets report
MAX_SOURCE_FAILURES = 4096  # per report: at most one per mapping the agent is the source of
# Bytes (UTF-8) of a failing source's reason; the agent cuts longer ones at a character. In
# characters it let 4,096 reasons of 3-byte characters past the frame (6 MB): every report
# unencodable, the control link dropped at each. In bytes the failures stay within 2.2 MB.
MAX_SOURCE_ERROR = 500
MAX_METRIC_NAME = 64
MAX_METRIC_LABELS = 8  # e.g. the disk path or the mapping of one figure
# Prometheus's own name rules, in ASCII: its client rewrites other characters to "_", so two
# names would become one series; an empty label name is unparsable; "__" names are its own.
_METRIC_NAME = re.compile(rf"[a-zA-Z0-9_]{{1,{MAX_METRIC_NAME}}}")  # after "relaysync_"
_LABEL_NAME = re.compile(rf"(?!__)[a-zA-Z_][a-zA-Z0-9_]{{0,{MAX_METRIC_NAME - 1}}}")


class MetricSample(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One figure: a gauge value, with labels such as the disk path or the mapping."""

    name: str  # e.g. cpu_percent, disk_used_percent, journal_backlog
    value: Finite
    labels: Annotated[tuple[tuple[str, str], ...], _upto(MAX_METRIC_LABELS)] = ()


class JournalHead(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A source's journal head for one mapping: the highest seq it has journaled. Fields are
    added at the end with a default only: an older agent's shorter array decodes with the
    default, and an older master ignores the elements past its own (msgspec's array_like)."""

    mapping_id: UInt63
    seq: UInt63
    # The source journal `seq` counts in (Journal.journal_id; "": an older agent). Another one
    # than before (the journal was recreated: seqs start again at 1) voids the targets'
    # watermarks that counted in the old one's seqs (master/store/_journals.py).
    journal_id: JournalId = ""


def failure_reason(text: str) -> str:
    """`text` fit for a SourceFailure: one line, no control characters (a terminal's escape
    sequences), a path's undecodable bytes as \\xNN (a lone surrogate failed the whole report's
    encoding, and the control link with it, at every report), at most MAX_SOURCE_ERROR bytes
    in UTF-8, cut at a character."""
    try:  # a path's bytes kept by surrogateescape: written as the bytes they were
        safe = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no path decoding makes
        safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    encoded = CONTROL_CHARACTERS.sub(" ", safe).encode("utf-8")
    return encoded[:MAX_SOURCE_ERROR].decode("utf-8", "ignore")  # "ignore": a cut character


class SourceFailure(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A mapping's source that cannot run (its folder missing, refused by the agent's folder
    guard, unreadable; its state; the inotify limit) while its agent retries it."""

    mapping_id: UInt63
    # why, as the agent logs it (cut to MAX_SOURCE_ERROR bytes; an older agent's to as many
    # characters, taken here and cut by the master's failure_reason)
    error: Annotated[str, msgspec.Meta(max_length=MAX_SOURCE_ERROR)]
    since: UnixTime  # unix time on the agent of the first failure since the source last ran
    attempts: UInt63 = 1  # starts tried and failed since then


class MetricsReport(Message, frozen=True, tag="metrics_report", omit_defaults=True):
    """Agent -> master, every metrics_interval_s (and at once when a source begins or stops
    failing): the agent's server figures, the journal head of each mapping it is the source of
    (the lag figures need it when no target reports: every target down), and the sources of its
    that cannot run, with why. An older agent sends no heads or failures; an older master
    ignores them (msgspec skips unknown fields). Without them (no source mapping, none failing)
    a report keeps the bytes it had before them (`omit_defaults`)."""

    at: UnixTime  # unix time on the agent when collected
    samples: Annotated[tuple[MetricSample, ...], _upto(MAX_METRIC_SAMPLES)]
    journal_heads: Annotated[tuple[JournalHead, ...], _upto(MAX_JOURNAL_HEADS)] = ()
    # every failing source of the agent; a report without one clears it on the master
    source_failures: Annotated[tuple[SourceFailure, ...], _upto(MAX_SOURCE_FAILURES)] = ()
    # sent at once on a change, between the regular reports, whose gap tells the master how
    # long the agent may stay silent (an early one counted shortened it: false "no data")
    early: bool = False

    def decoded_items(self) -> int:
        return (
            len(self.samples)
            + sum(len(s.labels) for s in self.samples)
            + len(self.journal_heads)
            + len(self.source_failures)
        )

    def validate(self) -> None:
        if len(self.samples) > MAX_METRIC_SAMPLES:
            raise ProtocolError(f"metrics_report: over {MAX_METRIC_SAMPLES} samples")
        if len(self.journal_heads) > MAX_JOURNAL_HEADS:
            raise ProtocolError(f"metrics_report: over {MAX_JOURNAL_HEADS} journal heads")
        if len(self.source_failures) > MAX_SOURCE_FAILURES:
            raise ProtocolError(f"metrics_report: over {MAX_SOURCE_FAILURES} source failures")
        if len({f.mapping_id for f in self.source_failures}) < len(self.source_failures):
            raise ProtocolError("metrics_report: a mapping's source failure twice")
        if any(len(s.labels) > MAX_METRIC_LABELS for s in self.samples):
            raise ProtocolError(f"metrics_report: a sample has over {MAX_METRIC_LABELS} labels")

    def usable(self) -> tuple[MetricsReport, list[str]]:
        """This report without the samples whose names Prometheus would rewrite or refuse, and
        why each left out one was: such a figure costs only itself, not the agent's link (an
        agent newer than the master may name a figure in a way this master does not take)."""
        problems = [(s, sample_problem(s)) for s in self.samples]
        refused = [why for _, why in problems if why]
        if not refused:
            return self, []
        kept = tuple(s for s, why in problems if not why)
        return msgspec.structs.replace(self, samples=kept), refused


def sample_problem(sample: MetricSample) -> str:
    """Why `sample` cannot become a Prometheus series as it is named, or "" if it can."""
    if not _METRIC_NAME.fullmatch(sample.name):
        return f"bad metric name {sample.name[:80]!r}"
    bad = [k for k, _ in sample.labels if not _LABEL_NAME.fullmatch(k)]
    if bad:
        return f"{sample.name}: bad label name {bad[0][:80]!r}"
    if any(len(v) > MAX_PATH_BYTES for _, v in sample.labels):
        return f"{sample.name}: a label value over {MAX_PATH_BYTES} characters"
    return ""
