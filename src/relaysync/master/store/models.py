"""The store's tables as typed SQLAlchemy 2 models; migrations/ creates them, these read and write them."""

from __future__ import annotations

import hashlib

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NODE_ID = String(64)  # SHA-256 hex
NAME = String(255)
PATH = Text()
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")  # sqlite autoincrements INTEGER only


class Base(DeclarativeBase):
    """Declarative base of every table."""


class ConfigEpoch(Base):
    """One row: the config epoch, bumped with every change agents must hear about."""

    __tablename__ = "config_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    # The highest mapping id ever given: ids are never reused (agents key their state by them).
    last_mapping_id: Mapped[int] = mapped_column(BigInteger, default=0)


class Server(Base):
    __tablename__ = "servers"

    node_id: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    region: Mapped[str] = mapped_column(NAME, default="")
    group_name: Mapped[str] = mapped_column(NAME, default="")
    address: Mapped[str] = mapped_column(NAME, default="")
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    capacity_weight: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[float] = mapped_column(Float)
    health: Mapped[str] = mapped_column(String(16), default="ok")  # ok | unhealthy (monitoring)
    # Set when an operator edits region/group/capacity (migration 0006_routing): from then on the
    # agent's Register no longer overwrites region and group.
    topology_locked: Mapped[bool] = mapped_column(Boolean, default=False)


class ServerCertificate(Base):
    """When a server's certificate expires (unix time), as its last control link showed (0016)."""

    __tablename__ = "server_certificates"

    node_id: Mapped[str] = mapped_column(
        NODE_ID, ForeignKey("servers.node_id", ondelete="CASCADE"), primary_key=True
    )
    not_after: Mapped[float] = mapped_column(Float)


class RevokedNode(Base):
    """A node removed from the fleet (migration 0012_revoked_nodes): its certificate stays valid
    for years and there is no CRL, so the control server refuses it by node id from then on."""

    __tablename__ = "revoked_nodes"

    node_id: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    name: Mapped[str] = mapped_column(NAME)  # its name when removed; the name itself may join again
    revoked_at: Mapped[float] = mapped_column(Float)


class Mapping(Base):
    __tablename__ = "mappings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    source_node: Mapped[str] = mapped_column(NODE_ID, ForeignKey("servers.node_id"))
    source_path: Mapped[str] = mapped_column(PATH)
    include: Mapped[list[str]] = mapped_column(JSON, default=list)
    exclude: Mapped[list[str]] = mapped_column(JSON, default=list)
    durability: Mapped[str] = mapped_column(String(16), default="safe")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class MappingTarget(Base):
    __tablename__ = "mapping_targets"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(NODE_ID, ForeignKey("servers.node_id"), primary_key=True)
    path: Mapped[str] = mapped_column(PATH)

    __table_args__ = (Index("ix_mapping_targets_node", "node_id"),)


class JoinToken(Base):
    __tablename__ = "join_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # "admin" or "api:<id>" (0018_token_scopes); None: created before that was recorded
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    # revoked by id, so an id is never given again (0015_api_token_ids)
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NAME)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    # "read" or "admin" (auth.tokens.TokenScope); tokens from before 0018_token_scopes are admin
    scope: Mapped[str] = mapped_column(String(8), server_default="admin")
    created_by: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Change(Base):
    """One row per change of a (mapping, source), however many targets report it: per seq of
    each source journal, as a recreated journal counts from seq 1 again (0026_change_journals)."""

    __tablename__ = "changes"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    source_node: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # the source journal `seq` counts in ("": not named, an older agent or a row from before
    # 0026: matches any); after seq in the key, so that a source's newest row is the key's top
    journal_id: Mapped[str] = mapped_column(
        String(64), primary_key=True, default="", server_default=""
    )
    op: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(PATH)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    reported_at: Mapped[float] = mapped_column(Float)
    # unix time (source clock) the source journaled it; 0 = unknown (0009_retention)
    changed_at: Mapped[float] = mapped_column(Float, default=0.0)

    __table_args__ = (
        Index("ix_changes_seq", "seq"),
        Index("ix_changes_reported_at", "reported_at"),
        # the job log of one mapping, newest first (0027_seq_index_exc_journals)
        Index("ix_changes_mapping_seq", "mapping_id", "seq"),
    )


class Watermark(Base):
    """Per (mapping, source, target): the highest seq committed with no gap below it."""

    __tablename__ = "watermarks"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    source_node: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    target_node: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[float] = mapped_column(Float)
    # the source journal `seq` counts in (0024; "": not named, an older agent: matches any)
    journal_id: Mapped[str] = mapped_column(String(64), default="", server_default="")


class SourceHead(Base):
    """Per (mapping, source): the highest seq the source says it has journaled (0020_source_heads).

    The lag figures take the head from here as well as from the change rows the targets report:
    with every target down, nothing reports, and only the source knows how far it is."""

    __tablename__ = "source_heads"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    source_node: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    reported_at: Mapped[float] = mapped_column(Float)
    # the source journal `seq` counts in (0024; "": not named yet), and when it was first heard:
    # change rows reported before then are an older journal's and raise the head no more
    journal_id: Mapped[str] = mapped_column(String(64), default="", server_default="")
    journal_since: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class RetiredJournal(Base):
    """Per (mapping, source): a source journal that a new one replaced (0024_journal_ids).

    A late report of it (resent from a target's outbox after a reconnect, read back from the
    job-log spool) says nothing of the new journal: it adds neither watermark nor change rows.
    Journal ids are random and never come back."""

    __tablename__ = "retired_journals"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    source_node: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    journal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    retired_at: Mapped[float] = mapped_column(Float)


class WatermarkAdvance(Base):
    """One row per report that moved a watermark: where per-target commit times come from."""

    __tablename__ = "watermark_advances"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    mapping_id: Mapped[int] = mapped_column(Integer, ForeignKey("mappings.id", ondelete="CASCADE"))
    source_node: Mapped[str] = mapped_column(NODE_ID)
    target_node: Mapped[str] = mapped_column(NODE_ID)
    from_seq: Mapped[int] = mapped_column(BigInteger)
    to_seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[float] = mapped_column(Float)
    files: Mapped[int] = mapped_column(Integer, default=0)
    wire_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # server names the changes came through, source first, the target last (0006_routing)
    route: Mapped[str] = mapped_column(Text, default="")
    # source-to-target latency (committed_at - changed_at) summed over the `latency_files` files
    # whose op carried its change time (0009_retention); duration_ms is transfer time only
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    latency_files: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_watermark_advances_key", "mapping_id", "source_node", "target_node", "to_seq"),
        Index("ix_watermark_advances_at", "at"),
    )


def path_key(path: str) -> str:
    """Return the fixed-size key under which a path is indexed (`CommitException.path_key`)."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()


class CommitException(Base):
    """A change that failed on a target; open until the same change commits there, or a later
    commit of its path (or a delete of a directory above it) makes it moot
    (store/_joblog_supersede.py)."""

    __tablename__ = "exceptions"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    mapping_id: Mapped[int] = mapped_column(Integer, ForeignKey("mappings.id", ondelete="CASCADE"))
    source_node: Mapped[str] = mapped_column(NODE_ID)
    target_node: Mapped[str] = mapped_column(NODE_ID)
    seq: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(PATH)
    path_key: Mapped[str] = mapped_column(
        String(64)
    )  # SHA-256 of path: unique-indexable at any length
    error: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the failed op (None: a row written before 0021, resolved by its own commit only)
    op: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # the source journal `seq` counts in ("": not named, an older agent or a row from before
    # 0027): a replaced journal's open failures are closed when it is retired (_journals.py)
    journal_id: Mapped[str] = mapped_column(String(64), default="", server_default="")

    __table_args__ = (
        Index("ix_exceptions_resolved_at", "resolved_at"),
        Index("ix_exceptions_path", "mapping_id", "source_node", "target_node", "path_key"),
        Index(
            "ux_exceptions_key",
            "mapping_id",
            "source_node",
            "target_node",
            "seq",
            "path_key",
            unique=True,
        ),
    )


class Catchup(Base):
    """Per (mapping, source, target): work done outside the journal (seq 0), as counters."""

    __tablename__ = "catchup"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    source_node: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    target_node: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    files: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[float] = mapped_column(Float)


# --- Monitoring (issue 7; migration 0003_monitoring) ---


class MetricSampleRow(Base):
    """One figure of one server at one time: raw (resolution_s 0) or a one-minute average (60)."""

    __tablename__ = "metric_samples"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    server: Mapped[str] = mapped_column(NAME)
    name: Mapped[str] = mapped_column(String(64))
    labels: Mapped[str] = mapped_column(Text, default="")  # JSON of sorted [key, value] pairs
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)
    resolution_s: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_metric_samples_series", "server", "name", "at"),
        Index("ix_metric_samples_age", "resolution_s", "at"),
    )


class ThresholdRow(Base):
    __tablename__ = "thresholds"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused (0013_sqlite_ids)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))  # server | group | all
    target: Mapped[str] = mapped_column(NAME, default="")  # server or group name; "" for all
    metric: Mapped[str] = mapped_column(String(64))
    operator: Mapped[str] = mapped_column(String(4))
    value: Mapped[float] = mapped_column(Float)
    for_s: Mapped[float] = mapped_column(Float, default=0.0)
    hysteresis: Mapped[float] = mapped_column(Float, default=0.0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)


class ProbeRow(Base):
    __tablename__ = "probes"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused (0013_sqlite_ids)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # tcp | ping
    host: Mapped[str] = mapped_column(NAME)
    port: Mapped[int] = mapped_column(Integer, default=0)
    server: Mapped[str] = mapped_column(NAME, default="")  # whose health it feeds; "" = none
    for_s: Mapped[float] = mapped_column(Float, default=0.0)
    timeout_s: Mapped[float] = mapped_column(Float, default=2.0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)


class AlertChannelRow(Base):
    __tablename__ = "alert_channels"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused (0013_sqlite_ids)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # email | webhook | sms | console
    config: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)


class AlertRow(Base):
    """One incident: fired once, maybe acknowledged, resolved once. The alert log."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255))  # e.g. threshold:3:web1, probe:2, heartbeat:web1
    server: Mapped[str] = mapped_column(NAME, default="")
    kind: Mapped[str] = mapped_column(String(16))  # threshold | probe | heartbeat
    subject: Mapped[str] = mapped_column(NAME)  # the metric or the probe's name
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16))  # firing | acknowledged | resolved
    fired_at: Mapped[float] = mapped_column(Float)
    acknowledged_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    acknowledged_by: Mapped[str] = mapped_column(NAME, default="")
    resolved_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        Index("ix_alerts_key_state", "key", "state"),
        Index("ix_alerts_fired", "fired_at"),
        Index("ix_alerts_resolved_at", "resolved_at"),  # retention prunes by it (0025)
        {"sqlite_autoincrement": True},  # ids are never reused (0013_sqlite_ids)
    )
