"""One channel-layer receive loop per process for the messages addressed to one connection.

Kicks (``session.kick``) and expiries (``presence.expire``) are sent to a connection's
channel name through the channel layer, from any process. Channels' stock consumer runs a
receive loop per connection for them: with channels_redis that is, per socket, a waiting
task plus two helper tasks and an ``asyncio.Queue`` around every wait — kilobytes of
memory and a task switch per message, for messages almost no connection ever gets.

All channel names a process's layer makes share one non-local part
(``specific.<client prefix>!``), which channels_redis reads with one blocking pop. The
:class:`Inbox` does that read once for the whole event loop and hands each message to the
consumer its channel name belongs to. Channel names, ``channel_layer.send()`` and the
message types are unchanged: ``sessions_app`` still kicks by sending to the name it stored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from channels_redis.core import RedisChannelLayer
from redis.exceptions import RedisError

from presence.loops import LoopLocal

logger = logging.getLogger(__name__)

RETRY_FIRST = 0.1
RETRY_MAX = 2.0
PROBE_INTERVAL = 10.0  # seconds without a message before the layer's Redis is pinged
PROBE_TIMEOUT = 5.0  # a ping unanswered this long means the layer is unreachable


class Addressee(Protocol):
    """A consumer the inbox delivers to."""

    async def dispatch_from_inbox(self, message: dict[str, Any]) -> None:
        """Handle one channel-layer message; never raises (a failure is the consumer's)."""


class Inbox:
    """This event loop's reader of the channel layer, for the consumers it holds."""

    def __init__(self, layer: RedisChannelLayer) -> None:
        self.layer = layer
        self.consumers: dict[str, Addressee] = {}
        self.task: asyncio.Task[None] | None = None
        self._real: str | None = None

    def register(self, channel: str, consumer: Addressee) -> None:
        """Deliver messages for ``channel`` to ``consumer`` from now on."""
        self.consumers[channel] = consumer
        if self._real is None:
            self._real = self.layer.non_local_name(channel)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="presence-inbox")

    def unregister(self, channel: str) -> None:
        """Forget ``channel`` (its consumer ended); later messages to it are dropped."""
        self.consumers.pop(channel, None)

    async def _run(self) -> None:
        assert self._real is not None
        delay = RETRY_FIRST
        while True:
            try:
                target, message = await self._receive(self._real)
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                if delay == RETRY_FIRST:
                    logger.warning("inbox: channel layer unreachable, retrying: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            for channel in target if isinstance(target, list) else [target]:
                consumer = self.consumers.get(channel)
                if consumer is not None:
                    # Its own task: a slow close must not hold up other sockets' messages.
                    asyncio.get_running_loop().create_task(consumer.dispatch_from_inbox(message))

    async def _receive(self, real: str) -> tuple[Any, dict[str, Any]]:
        """The next message for ``real``; raises only when the layer's Redis stopped answering.

        channels_redis' ``receive_single`` loops over 5 s blocking pops until a message comes:
        on an idle layer it never returns, which is not a fault. So the read is not given a
        deadline; instead, every ``PROBE_INTERVAL`` without a message the layer's Redis is
        pinged, and only a ping that fails or goes unanswered gives the read up (a paused
        or vanished Redis would otherwise hold the pop forever). Cancelling the read loses
        nothing: channels_redis keeps a popped message in its backup queue until processed.
        """
        read = asyncio.ensure_future(self.layer.receive_single(real))
        try:
            while True:
                done, _ = await asyncio.wait({read}, timeout=PROBE_INTERVAL)
                if done:
                    result: tuple[Any, dict[str, Any]] = read.result()
                    return result
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await self.layer.connection(self.layer.consistent_hash(real)).ping()
        finally:
            if not read.done():
                read.cancel()
                await asyncio.gather(read, return_exceptions=True)


_inboxes: LoopLocal[Inbox] = LoopLocal()


def get_inbox(layer: Any) -> Inbox | None:
    """The running loop's inbox for ``layer``; None when the layer is not channels_redis'."""
    if not isinstance(layer, RedisChannelLayer):
        return None
    inbox = _inboxes.get(lambda loop: Inbox(layer))
    if inbox.layer is not layer:  # the layer was replaced (settings changed, in tests)
        _inboxes.discard()
        inbox = _inboxes.get(lambda loop: Inbox(layer))
    return inbox
