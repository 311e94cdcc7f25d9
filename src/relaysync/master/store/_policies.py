"""Link policies: delta or dump copy, compression and bandwidth per network section or server pair.

A section is the relation between a source and a target: the same group, the same region, or
another region. Each field of a row may be left out (NULL: inherited), and the link's policy is
worked out field by field: the pair's row, else the section's row, else the section's default
(no compression inside a group, zstd 1 inside a region, zstd 3 between regions; TLS on).
A policy's bandwidth may change with the time of day: the first of its windows (days, start,
end, limit; in UTC or its timezone) that holds sets the limit, else its base limit does.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from sqlalchemy import JSON, Boolean, Float, Integer, String, UniqueConstraint, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store.models import NAME, NODE_ID, Base, Server
from relaysync.protocol.messages import BandwidthWindow, LinkPolicy, MappingSpec, TargetSpec
from relaysync.transfer.bandwidth import BandwidthSchedule

Scope = Literal["same_group", "same_region", "inter_region", "pair"]
SCOPES: tuple[str, ...] = ("same_group", "same_region", "inter_region", "pair")
TRANSFERS = ("auto", "delta", "whole")
SECTION_DEFAULTS: dict[str, LinkPolicy] = {
    "same_group": LinkPolicy(zstd_level=0),
    "same_region": LinkPolicy(zstd_level=1),
    "inter_region": LinkPolicy(zstd_level=3),
}
# The fields a row sets or leaves to its section (and a section row to its default), one by one.
FIELDS: tuple[str, ...] = (
    "tls",
    "transfer",
    "zstd_level",
    "bandwidth_limit_mbit",
    "windows",
    "timezone",
)

SessionFactory = Callable[[str], AbstractContextManager[Session]]


class LinkPolicyRow(Base):
    __tablename__ = "link_policies"
    __table_args__ = (
        UniqueConstraint("scope", "source_node", "target_node", name="uq_link_policy"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    source_node: Mapped[str] = mapped_column(NODE_ID, default="")  # pair only
    target_node: Mapped[str] = mapped_column(NODE_ID, default="")  # pair only
    # FIELDS: NULL = inherited from the section (or its default); nullable since 0011_policy_inherit
    tls: Mapped[bool | None] = mapped_column(Boolean)
    transfer: Mapped[str | None] = mapped_column(String(8))
    zstd_level: Mapped[int | None] = mapped_column(Integer)
    bandwidth_limit_mbit: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(NAME, default="")
    # [{days, start, end, bandwidth_limit_mbit}, ...] in the order they are tried (0008_policy_windows)
    windows: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    timezone: Mapped[str | None] = mapped_column(String(64))  # the windows' zone; "" = UTC


@dataclass(frozen=True)
class PolicyInfo:
    """A policy row: the fields it sets (None: inherited) and what its links get."""

    id: int
    scope: str
    source: str  # node id, pair only
    target: str
    tls: bool | None
    transfer: str | None
    zstd_level: int | None
    bandwidth_limit_mbit: float | None
    updated_at: float
    windows: list[dict[str, Any]] | None
    timezone: str | None
    effective: (
        LinkPolicy  # a pair: its link's policy; a section: that of its links without a pair row
    )


def _info(row: LinkPolicyRow, effective: LinkPolicy) -> PolicyInfo:
    return PolicyInfo(
        id=row.id,
        scope=row.scope,
        source=row.source_node,
        target=row.target_node,
        tls=row.tls,
        transfer=row.transfer,
        zstd_level=row.zstd_level,
        bandwidth_limit_mbit=row.bandwidth_limit_mbit,
        updated_at=row.updated_at,
        windows=None if row.windows is None else [dict(w) for w in row.windows],
        timezone=row.timezone,
        effective=effective,
    )


def _combine(rows: Sequence[LinkPolicyRow | None], default: LinkPolicy) -> LinkPolicy:
    """Each field from the first of `rows` that sets it, else from `default`."""
    values: dict[str, Any] = {}
    for field in FIELDS:
        value = next(
            (v for r in rows if r is not None and (v := getattr(r, field)) is not None), None
        )
        if value is not None:
            values[field] = value
    if "windows" in values:
        values["windows"] = tuple(msgspec.convert(w, BandwidthWindow) for w in values["windows"])
    return msgspec.structs.replace(default, **values)


def windows_of(windows: Sequence[Mapping[str, Any]]) -> tuple[BandwidthWindow, ...]:
    """Windows as given to the API or the store (mappings with the BandwidthWindow fields).

    Raises:
        ConfigError: a window with unknown or mistyped fields.
    """
    out = []
    for i, w in enumerate(windows):
        unknown = sorted(set(w) - set(BandwidthWindow.__struct_fields__))
        if unknown or not {"start", "end"} <= set(w):
            raise ConfigError(
                f"window {i + 1}: takes days (optional), start, end and bandwidth_limit_mbit"
                + (f", not {', '.join(unknown)}" if unknown else "")
            )
        try:
            out.append(msgspec.convert(dict(w), BandwidthWindow))
        except msgspec.ValidationError as exc:
            raise ConfigError(f"window {i + 1}: {exc}") from exc
    return tuple(out)


def section_of(source: Server | None, target: Server | None) -> str:
    if source is None or target is None or source.region != target.region:
        return "inter_region"
    return "same_group" if source.group_name == target.group_name else "same_region"


def validate(
    scope: str,
    transfer: str | None,
    zstd_level: int | None,
    bandwidth_limit_mbit: float | None,
    source: str | None,
    target: str | None,
    windows: Sequence[BandwidthWindow] = (),
    timezone: str | None = None,
) -> None:
    """Check the fields a row sets (None: inherited, not checked).

    Raises:
        ConfigError: a bad value, or servers named where the scope takes none (or too few).
    """
    if scope not in SCOPES:
        raise ConfigError(f"policy scope {scope!r} is not one of {', '.join(SCOPES)}")
    if transfer is not None and transfer not in TRANSFERS:
        raise ConfigError(f"policy transfer {transfer!r} is not one of {', '.join(TRANSFERS)}")
    if zstd_level is not None and not 0 <= zstd_level <= 19:
        raise ConfigError(f"zstd level {zstd_level} is outside 0..19 (0 = off)")
    if bandwidth_limit_mbit is not None and not 0 <= bandwidth_limit_mbit <= sys.float_info.max:
        raise ConfigError("bandwidth limit must be a number >= 0 (0 = unlimited)")
    if scope == "pair" and not (source and target):
        raise ConfigError(
            "a pair policy names a source and a target server; a section policy names neither"
        )
    if scope != "pair" and (source or target):
        # Sections are looked up without servers: such a row would apply to no link.
        raise ConfigError(
            "a section policy names no server; use scope 'pair' for one source and target"
        )
    BandwidthSchedule(
        bandwidth_limit_mbit or 0.0, windows, timezone or ""
    )  # raises on bad windows or timezone


class PolicyStore:
    """Policies in the master's store; `apply` fills them into assignment specs."""

    def __init__(
        self,
        read: SessionFactory,
        write: SessionFactory,
        bump_epoch: Callable[[Session], None],
        resolve_server: Callable[[Session, str], Server],
    ) -> None:
        self._read, self._write = read, write
        self._bump_epoch = bump_epoch
        # Key from which plain (TLS-off) links' secrets are derived; the master sets it from its
        # data dir so secrets survive restarts. Random by default (tests, tools).
        self.link_key = secrets.token_bytes(32)
        self._resolve = resolve_server

    def set_policy(
        self,
        *,
        scope: str,
        source: str | None = None,
        target: str | None = None,
        tls: bool | None = None,
        transfer: str | None = None,
        zstd_level: int | None = None,
        bandwidth_limit_mbit: float | None = None,
        windows: Sequence[Mapping[str, Any]] | None = None,
        timezone: str | None = None,
    ) -> PolicyInfo:
        """Create or replace the policy of a section or of a server pair (servers by name or id).

        A field given as None is inherited: a pair's from its section's row, a section's from
        the section's default. `windows` are tried in order (the first that holds sets the
        limit), each a mapping of days ("mon-fri", "" = every day), start and end ("HH:MM"; an
        end before the start runs past midnight) and bandwidth_limit_mbit; `timezone` is their
        IANA zone ("" = UTC).

        Raises:
            ConfigError: a bad field, or servers where the scope takes none (or too few).
            NotFound: a named server.
        """
        parsed = None if windows is None else windows_of(windows)
        validate(
            scope,
            transfer,
            zstd_level,
            bandwidth_limit_mbit,
            source,
            target,
            parsed or (),
            timezone,
        )
        with self._write("set policy") as session:
            src = self._resolve(session, source).node_id if source else ""
            dst = self._resolve(session, target).node_id if target else ""
            row = session.scalar(
                select(LinkPolicyRow).where(
                    LinkPolicyRow.scope == scope,
                    LinkPolicyRow.source_node == src,
                    LinkPolicyRow.target_node == dst,
                )
            )
            if row is None:
                row = LinkPolicyRow(
                    scope=scope, source_node=src, target_node=dst, updated_at=time.time()
                )
                session.add(row)
            row.tls, row.transfer, row.zstd_level = tls, transfer, zstd_level
            row.bandwidth_limit_mbit, row.updated_at = bandwidth_limit_mbit, time.time()
            row.windows = None if parsed is None else [msgspec.to_builtins(w) for w in parsed]
            row.timezone = timezone
            self._bump_epoch(session)
            session.flush()
            return self._infos(session, [row])[0]

    def list_policies(self) -> list[PolicyInfo]:
        """Every row by id, each with what it sets and what its links get."""
        with self._read("list policies") as session:
            return self._infos(
                session, list(session.scalars(select(LinkPolicyRow).order_by(LinkPolicyRow.id)))
            )

    def _infos(self, session: Session, rows: Sequence[LinkPolicyRow]) -> list[PolicyInfo]:
        every = {
            (r.scope, r.source_node, r.target_node): r
            for r in session.scalars(select(LinkPolicyRow))
        }
        out = []
        for row in rows:
            if row.scope == "pair":
                effective = _effective(
                    every,
                    session.get(Server, row.source_node),
                    session.get(Server, row.target_node),
                    row.source_node,
                    row.target_node,
                )
            else:
                effective = _combine((row,), SECTION_DEFAULTS[row.scope])
            out.append(_info(row, effective))
        return out

    def delete_policy(self, policy_id: int) -> None:
        with self._write("delete policy") as session:
            if (
                session.execute(delete(LinkPolicyRow).where(LinkPolicyRow.id == policy_id)).rowcount  # type: ignore[attr-defined]
                == 0
            ):
                raise NotFound("policy", policy_id)
            self._bump_epoch(session)

    def effective(self, session: Session, source: str, target: str) -> LinkPolicy:
        """The policy for the link source -> target, field by field: pair, else section, else section default."""
        rows = {
            (r.scope, r.source_node, r.target_node): r
            for r in session.scalars(select(LinkPolicyRow))
        }
        return _effective(
            rows, session.get(Server, source), session.get(Server, target), source, target
        )

    def apply(self, session: Session, specs: Sequence[MappingSpec]) -> Iterator[MappingSpec]:
        """Yield the specs with each target's effective policy filled in."""
        rows = {
            (r.scope, r.source_node, r.target_node): r
            for r in session.scalars(select(LinkPolicyRow))
        }
        nodes = {n for spec in specs for n in _link_ends(spec)}
        servers = {
            s.node_id: s for s in session.scalars(select(Server).where(Server.node_id.in_(nodes)))
        }
        # per (sender, target): mappings share their links' pairs (an agent's assignment names
        # each of 50 mappings' 49 targets: 2,450 combinations of 49 pairs)
        policies: dict[tuple[str, str], LinkPolicy] = {}

        def policy_of(sender: str, target: str) -> LinkPolicy:
            policy = policies.get((sender, target))
            if policy is None:
                policy = policies[(sender, target)] = _effective(
                    rows, servers.get(sender), servers.get(target), sender, target
                )
            return policy

        for spec in specs:
            # A routed target's link is the hop from its parent: the policy of that section or pair.
            parent_of = {h.child: h.parent for h in spec.routes}
            targets = []
            for t in spec.targets:
                sender = parent_of.get(t.node_id, spec.source_node)
                policy = policy_of(sender, t.node_id)
                secret = b"" if policy.tls else self.link_secret(spec.mapping_id, sender, t.node_id)
                targets.append(
                    TargetSpec(node_id=t.node_id, path=t.path, policy=policy, link_secret=secret)
                )
            yield MappingSpec(
                **{f: getattr(spec, f) for f in spec.__struct_fields__ if f != "targets"},
                targets=tuple(targets),
            )

    def link_secret(self, mapping_id: int, sender: str, target: str) -> bytes:
        """The secret the sender of a plain link (the target's parent: the source, or a relay)
        proves it holds. Per hop: only the master, that sender and that target know it (see
        `secrets_for`), and a node that fed the target in an earlier routing epoch cannot use
        its secret to pass as the current parent."""
        return hmac.new(
            self.link_key, f"{mapping_id}:{sender}:{target}".encode(), hashlib.sha256
        ).digest()


def _link_ends(spec: MappingSpec) -> Iterator[str]:
    """The nodes at either end of `spec`'s links: its source, every target, every relay."""
    yield spec.source_node
    for t in spec.targets:
        yield t.node_id
    for hop in spec.routes:
        yield hop.parent


def secrets_for(spec: MappingSpec, node_id: str) -> MappingSpec:
    """`spec` as `node_id` may hold it: the link secrets of its own target entry and of the
    targets it feeds, none of the others (a sibling target could pose as their parent)."""
    parent_of = {h.child: h.parent for h in spec.routes}
    targets = tuple(
        t
        if not t.link_secret
        or t.node_id == node_id
        or parent_of.get(t.node_id, spec.source_node) == node_id
        else msgspec.structs.replace(t, link_secret=b"")
        for t in spec.targets
    )
    return msgspec.structs.replace(spec, targets=targets)


def _effective(
    rows: dict[tuple[str, str, str], LinkPolicyRow],
    src: Server | None,
    dst: Server | None,
    source: str,
    target: str,
) -> LinkPolicy:
    section = section_of(src, dst)
    return _combine(
        (rows.get(("pair", source, target)), rows.get((section, "", ""))), SECTION_DEFAULTS[section]
    )
