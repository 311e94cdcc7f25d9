"""The notifier: delivers each alert notice through every enabled channel, retrying failures.

Notices of one alert go through a channel in the order they were made: each channel has a lane
per server and subject (the alert's), delivered one notice after the other, so a RESOLVED
retried while a channel was down never arrives before its FIRING.

Error handling: a failed delivery (AlertDeliveryFailed, a timeout) is retried with backoff for
NOTIFY_GIVE_UP_S, then logged as an error and dropped; a channel that fails in an unexpected way
fails only its own delivery (logged with its traceback, not retried). A store failure reading the
channels falls back to the channels read last, or, before any was read, is retried with backoff:
it never ends the monitor.
Resource handling: each lane's deliveries run in the owner's task group, each attempt under
NOTIFY_TIMEOUT_S; notices waiting for the channels or in a lane are in memory only.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from relaysync.errors import AlertDeliveryFailed, ConfigError, StoreError
from relaysync.monitor.alerts import Channel, Notice, build_channel
from relaysync.monitor.types import ChannelInfo

logger = logging.getLogger(__name__)

NOTIFY_TIMEOUT_S = 30.0  # one channel delivering one notice
NOTIFY_RETRY_FIRST_S = 1.0  # the wait after a failed delivery; it doubles with each failure
NOTIFY_RETRY_MAX_S = 60.0  # the longest wait between two attempts
NOTIFY_GIVE_UP_S = (
    3_600.0  # a notice no attempt delivered within this is dropped, logged as an error
)

Lane = tuple[str, str, str]  # (channel name, server, subject): one alert key's notices, in order


class Notifier:
    """Sends notices to the channels `list_channels` returns (read for each notice)."""

    def __init__(
        self,
        *,
        list_channels: Callable[[], list[ChannelInfo]],
        alarm: Callable[[Notice], None],
    ) -> None:
        self.list_channels = list_channels
        self.alarm = alarm
        self.sent: dict[str, int] = {}  # channel name -> notices delivered
        self._inbox: deque[Notice] = deque()  # notices whose channels are not read yet
        self._reading = False  # a task reads the channels for the inbox
        self._channels: list[ChannelInfo] | None = None  # the list read last
        self._lanes: dict[Lane, deque[tuple[ChannelInfo, Notice]]] = {}

    def start(self, tg: TaskGroup, notice: Notice) -> None:
        """Deliver `notice` in the background, in `tg`, after the notices started before it."""
        self._inbox.append(notice)
        if not self._reading:
            self._reading = True
            tg.start_soon(self._read_inbox, tg)

    async def _read_inbox(self, tg: TaskGroup) -> None:
        """Put each notice, in turn, in the lane of every enabled channel."""
        try:
            while self._inbox:
                channels = await self._read_channels()
                notice = self._inbox.popleft()
                for info in channels:
                    if info.enabled:
                        self._queue(tg, info, notice)
        finally:
            self._reading = False

    async def _read_channels(self) -> list[ChannelInfo]:
        """Return the channels; if the store fails, the list read last, or (none read yet) the
        list read once the store answers, retried with backoff."""
        delay_s = NOTIFY_RETRY_FIRST_S
        while True:
            try:
                self._channels = await anyio.to_thread.run_sync(self.list_channels)
                return self._channels
            except StoreError as exc:
                if self._channels is not None:
                    logger.warning("alert channels not read, sending to those read last: %s", exc)
                    return self._channels
                logger.warning(
                    "alert channels not read, notices wait; retrying in %g s: %s", delay_s, exc
                )
            await anyio.sleep(delay_s)
            delay_s = min(2 * delay_s, NOTIFY_RETRY_MAX_S)

    def _queue(self, tg: TaskGroup, info: ChannelInfo, notice: Notice) -> None:
        lane = (info.name, notice.server, notice.metric)
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
            tg.start_soon(self._drain, lane, queue)
        queue.append((info, notice))

    async def _drain(self, lane: Lane, queue: deque[tuple[ChannelInfo, Notice]]) -> None:
        """Deliver a lane's notices one after the other, each once done with (or given up)."""
        try:
            while queue:
                await self._deliver(*queue[0])
                queue.popleft()
        finally:
            del self._lanes[lane]

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
