"""The notifier: delivers each alert notice through every enabled channel, retrying failures.

Error handling: a failed delivery (AlertDeliveryFailed, a timeout) is retried with backoff for
NOTIFY_GIVE_UP_S, then logged as an error and dropped; a channel that fails in an unexpected way
fails only its own delivery (logged with its traceback, not retried).
Resource handling: each delivery runs in the owner's task group, each attempt under
NOTIFY_TIMEOUT_S.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from relaysync.errors import AlertDeliveryFailed, ConfigError
from relaysync.monitor.alerts import Channel, Notice, build_channel
from relaysync.monitor.types import ChannelInfo

logger = logging.getLogger(__name__)

NOTIFY_TIMEOUT_S = 30.0  # one channel delivering one notice
NOTIFY_RETRY_FIRST_S = 1.0  # the wait after a failed delivery; it doubles with each failure
NOTIFY_RETRY_MAX_S = 60.0  # the longest wait between two attempts
NOTIFY_GIVE_UP_S = (
    3_600.0  # a notice no attempt delivered within this is dropped, logged as an error
)


class Notifier:
    """Sends notices to the channels `list_channels` returns (read at each notice)."""

    def __init__(
        self,
        *,
        list_channels: Callable[[], list[ChannelInfo]],
        alarm: Callable[[Notice], None],
    ) -> None:
        self.list_channels = list_channels
        self.alarm = alarm
        self.sent: dict[str, int] = {}  # channel name -> notices delivered

    def start(self, tg: TaskGroup, notice: Notice) -> None:
        """Deliver `notice` in the background, in `tg`."""
        tg.start_soon(self.notify, notice)

    async def notify(self, notice: Notice) -> None:
        channels = await anyio.to_thread.run_sync(self.list_channels)
        async with anyio.create_task_group() as tg:
            for info in channels:
                if info.enabled:
                    tg.start_soon(self._deliver, info, notice)

    async def _deliver(self, info: ChannelInfo, notice: Notice) -> None:
        """Send one notice through one channel, retrying a failed delivery with backoff."""
        try:
            channel = build_channel(info.kind, info.config, alarm=self.alarm)
        except ConfigError as exc:
            logger.error("alert %s via %s not sent: %s", notice.alert_id, info.name, exc)
            return
        delay_s, give_up_at = NOTIFY_RETRY_FIRST_S, anyio.current_time() + NOTIFY_GIVE_UP_S
        while not await self._attempt(channel, info, notice):
            if anyio.current_time() + delay_s > give_up_at:
                logger.error(
                    "alert %s via %s: gave up after %g s",
                    notice.alert_id,
                    info.name,
                    NOTIFY_GIVE_UP_S,
                )
                return
            await anyio.sleep(delay_s)
            delay_s = min(2 * delay_s, NOTIFY_RETRY_MAX_S)
        self.sent[info.name] = self.sent.get(info.name, 0) + 1
        logger.info("alert %s (%s) sent via %s", notice.alert_id, notice.state, info.name)

    async def _attempt(self, channel: Channel, info: ChannelInfo, notice: Notice) -> bool:
        """Return whether the notice is done with: sent, or failed in a way a retry cannot fix."""
        try:
            with anyio.fail_after(NOTIFY_TIMEOUT_S):
                await channel.send(notice)
        except (AlertDeliveryFailed, TimeoutError) as exc:
            logger.warning(
                "alert %s via %s failed, will retry: %s",
                notice.alert_id,
                info.name,
                exc or "timeout",
            )
            return False
        except Exception:  # a channel's bug must not end the monitor (and the master with it)
            logger.exception("alert %s via %s failed unexpectedly", notice.alert_id, info.name)
        return True
