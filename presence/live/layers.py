"""Channel layer that lets live sockets ride out a Redis outage.

channels_redis raises from ``receive()`` when Redis is unreachable, and Channels then tears
the consumer down without running ``disconnect()``: every socket of the process would drop
with 1011. Here ``receive()`` retries with backoff instead, so sockets stay open, heartbeats
are answered ``unavailable`` meanwhile, and everything resumes when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels_redis.core import RedisChannelLayer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

RETRY_FIRST = 0.1
RETRY_MAX = 2.0


class ResilientRedisChannelLayer(RedisChannelLayer):
    """``RedisChannelLayer`` whose ``receive()`` waits for Redis instead of raising."""

    async def receive(self, channel: str) -> Any:
        delay = RETRY_FIRST
        while True:
            try:
                return await super().receive(channel)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Messages already buffered for this channel are gone (channels_redis drops
                # its buffer on errors); new ones queue in Redis once it is back.
                if delay == RETRY_FIRST:
                    logger.warning("channel layer: Redis unreachable, retrying: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
