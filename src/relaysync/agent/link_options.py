"""The settings of each link an agent opens: the master's policy for the pair, else the agent's.

One token bucket per peer and limit: every link to a server (one per mapping, and relayed ones)
shares it, so a limit caps the network link, not each folder on it. An entry lives as long as a
link holds its bucket.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable

import msgspec

from relaysync.config.schema import AgentConfig
from relaysync.errors import ConfigError
from relaysync.protocol.messages import LinkPolicy, TargetSpec
from relaysync.transfer.bandwidth import BandwidthSchedule, TokenBucket
from relaysync.transfer.codec import codec_for_level
from relaysync.transfer.ops import SendOptions
from relaysync.transfer.signatures import SignatureStore

logger = logging.getLogger(__name__)


class LinkOptions:
    """Builds SendOptions for the links of one agent, sharing bandwidth buckets per peer."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self._buckets: weakref.WeakValueDictionary[tuple[str, bytes], TokenBucket] = (
            weakref.WeakValueDictionary()
        )

    def for_target(
        self, target: TargetSpec, signatures: SignatureStore | None, transfer_override: str = ""
    ) -> SendOptions:
        """The link's settings: the master's policy for this pair, else this agent's defaults.

        The mapping's `transfer_override` beats the policy's delta/dump choice. The bandwidth
        limit follows the policy's time-of-day windows while the link runs. `signatures` is the
        source's store (None for a relay, which forwards what it got).
        """
        policy = target.policy or LinkPolicy(
            zstd_level=self.cfg.zstd_level, bandwidth_limit_mbit=self.cfg.bandwidth_limit_mbit
        )
        return SendOptions(
            codec=codec_for_level(policy.zstd_level),
            signatures=signatures,
            bandwidth=self._bucket(policy, target),
            force=transfer_override or policy.transfer,
            tls=policy.tls or not target.link_secret,
            link_secret=target.link_secret,
            corrupt_deltas=int(os.environ.get("RELAYSYNC_TEST_CORRUPT_DELTAS", "0") or 0),
        )

    def _bucket(self, policy: LinkPolicy, target: TargetSpec) -> TokenBucket:
        """The token bucket of the links to `target` under this limit (shared, see the module)."""
        key = (
            target.node_id,
            msgspec.msgpack.encode(
                (
                    policy.bandwidth_limit_mbit,
                    policy.windows,
                    policy.timezone,
                    self.cfg.bandwidth_limit_mbit,
                )
            ),
        )
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._bandwidth_rate(policy, target))
        return bucket

    def _bandwidth_rate(self, policy: LinkPolicy, target: TargetSpec) -> Callable[[], float]:
        """Bytes per second now: the policy's window in force or base limit, else this agent's limit."""
        try:
            schedule = BandwidthSchedule(
                policy.bandwidth_limit_mbit, policy.windows, policy.timezone
            )
        except ConfigError as exc:  # the master checked them; this host may lack the timezone
            logger.error("link to %s: bandwidth windows ignored: %s", target.node_id[:16], exc)
            schedule = BandwidthSchedule(policy.bandwidth_limit_mbit)
        return schedule.rate(fallback_mbit=self.cfg.bandwidth_limit_mbit)
