"""This event loop's watcher of Sentinel switch-overs (presence/store/switchover.py).

Only with ``REDIS_URL`` in the ``redis+sentinel://`` form: one task per event loop listens
on one sentinel at a time for ``+switch-master`` of the store's primary and, when it comes,
drops the loop's store connections, so that heartbeats, connects and the log reader go to
the new primary at once instead of writing to the old one until the sentinels demote it.
A sentinel that does not answer is replaced by the next one; the watcher never ends the
process and costs one idle connection.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from presence import store
from presence.conf import app_settings
from presence.loops import LoopLocal
from presence.redis_url import parse_redis_url

logger = logging.getLogger(__name__)

# How long one subscription listens before it is renewed (a quiet sentinel is not an error).
LISTEN = 60.0
RETRY = 1.0


async def _watch() -> None:
    target = parse_redis_url(app_settings.REDIS_URL)
    if not target.is_sentinel:
        return
    i = 0
    while True:
        host, port = target.sentinels[i % len(target.sentinels)]
        try:
            if await store.await_switch(target, host, port, LISTEN):
                dropped = await store.drop_async_connections()
                logger.warning(
                    "presence store: Sentinel switched the primary of %s; %d clients reconnect",
                    target.master_name,
                    dropped,
                )
        except (RedisError, OSError) as exc:
            logger.info("switch-over watcher: sentinel %s:%s unreachable: %r", host, port, exc)
            i += 1
            await asyncio.sleep(RETRY)


_watchers: LoopLocal[asyncio.Task[None]] = LoopLocal(
    lambda loop: loop.create_task(_watch(), name="presence-switchover")
)


def ensure_switchover_watcher() -> None:
    """Start this event loop's watcher once (a no-op without a Sentinel URL)."""
    _watchers.get()
