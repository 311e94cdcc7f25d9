"""The store's tables for relay routes: routing settings, per-target policies and failed state, recovery jobs.

They live beside models.py on the same declarative Base; migration 0006_routing creates them.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from relaysync.master.store.models import BIG_ID, NODE_ID, Base

DEFAULT_FANOUT = 4  # children per relay: one copy per region/group, then a bounded fan-out
DEFAULT_FAIL_AFTER_S = 120.0  # a target unreachable this long (agents retry with backoff) is failed


class MappingRoutingRow(Base):
    __tablename__ = "mapping_routing"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    mode: Mapped[str] = mapped_column(String(16), default="auto")
    hops: Mapped[list[list[str]]] = mapped_column(
        JSON, default=list
    )  # manual: [parent, child] node ids
    fanout: Mapped[int] = mapped_column(Integer, default=DEFAULT_FANOUT)
    recovery_policy: Mapped[str] = mapped_column(String(16), default="at_once")
    recovery_schedule: Mapped[str] = mapped_column(
        String(255), default=""
    )  # reserved: at:|every:|cron:
    fail_after_s: Mapped[float] = mapped_column(Float, default=DEFAULT_FAIL_AFTER_S)
    updated_at: Mapped[float] = mapped_column(Float)


class RoutingTargetRow(Base):
    """Per (mapping, target): a recovery policy override and the durable failed state."""

    __tablename__ = "routing_targets"

    mapping_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("mappings.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(NODE_ID, primary_key=True)
    policy: Mapped[str] = mapped_column(String(16), default="")  # "" = the mapping's policy
    schedule: Mapped[str] = mapped_column(String(255), default="")
    failed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    next_recovery_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # reserved policy


class RecoveryJobRow(Base):
    __tablename__ = "recovery_jobs"
    __table_args__ = (
        Index("ix_recovery_jobs_mapping", "mapping_id", "started_at"),
        {"sqlite_autoincrement": True},  # ids are never reused (0013_sqlite_ids)
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    mapping_id: Mapped[int] = mapped_column(Integer, ForeignKey("mappings.id", ondelete="CASCADE"))
    target_node: Mapped[str] = mapped_column(NODE_ID)
    trigger: Mapped[str] = mapped_column(String(16))  # at_once | reserved | manual
    started_at: Mapped[float] = mapped_column(Float)
    from_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # the target's watermark at start
    goal_seq: Mapped[int] = mapped_column(
        BigInteger, default=0
    )  # the other targets' best watermark
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed
    detail: Mapped[str] = mapped_column(Text, default="")
