"""The process's inbox against the real channel layer on the test Redis.

An idle layer is not a fault (channels_redis' receive waits in 5 s blocking pops until a
message comes); a Redis that stops answering is one, found by the inbox's ping, warned about
once, and recovered from without losing the message sent meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import pytest
from channels.layers import get_channel_layer

from config.embedded_redis import RedisServer
from presence.live import inbox as inbox_module
from presence.live.inbox import get_inbox

pytestmark = pytest.mark.timeout(60)


class Collector:
    """An addressee that keeps what the inbox hands it."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def dispatch_from_inbox(self, message: dict[str, Any]) -> None:
        self.messages.put_nowait(message)


@pytest.fixture
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox_module, "PROBE_INTERVAL", 0.5)
    monkeypatch.setattr(inbox_module, "PROBE_TIMEOUT", 0.5)


async def test_an_idle_layer_is_not_unreachable(
    fast_probe: None, caplog: pytest.LogCaptureFixture
) -> None:
    layer = get_channel_layer()
    layer.brpop_timeout = 1  # the pop returns empty every second: the old code gave up at 6 s
    inbox = get_inbox(layer)
    assert inbox is not None
    channel = await layer.new_channel()
    collector = Collector()
    inbox.register(channel, collector)
    with caplog.at_level(logging.WARNING, logger="presence.live.inbox"):
        await asyncio.sleep(7)  # several empty pops and probes
        await layer.send(channel, {"type": "session.kick"})
        message = await asyncio.wait_for(collector.messages.get(), 1)
    inbox.unregister(channel)
    assert message["type"] == "session.kick"
    assert "unreachable" not in caplog.text
    assert inbox.task is not None
    inbox.task.cancel()


async def test_a_paused_redis_is_warned_about_and_nothing_is_lost(
    fast_probe: None, caplog: pytest.LogCaptureFixture, redis_server: RedisServer
) -> None:
    layer = get_channel_layer()
    inbox = get_inbox(layer)
    assert inbox is not None
    channel = await layer.new_channel()
    collector = Collector()
    inbox.register(channel, collector)
    await asyncio.sleep(0.2)  # the read is waiting in its blocking pop
    with caplog.at_level(logging.WARNING, logger="presence.live.inbox"):
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(2)  # a probe goes unanswered
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        await layer.send(channel, {"type": "presence.expire"})
        message = await asyncio.wait_for(collector.messages.get(), 5)
    inbox.unregister(channel)
    assert message["type"] == "presence.expire"
    assert caplog.text.count("channel layer unreachable") == 1
    assert inbox.task is not None
    inbox.task.cancel()
