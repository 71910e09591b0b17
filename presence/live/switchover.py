"""This event loop's watcher of Sentinel switch-overs (presence/store/switchover.py).

For each Redis URL of the store in the ``redis+sentinel://`` form (``REDIS_URL``, and each of
PRESENCE_REDIS_SHARD_URLS): one task per URL and event loop listens on one of its sentinels
at a time for ``+switch-master`` of that primary and, when it comes,
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
from presence.redis_url import RedisTarget, parse_redis_url

logger = logging.getLogger(__name__)

# How long one subscription listens before it is renewed (a quiet sentinel is not an error).
LISTEN = 60.0
RETRY = 1.0


def _sentinel_targets() -> list[RedisTarget]:
    """The distinct Sentinel-form targets among REDIS_URL and the shard URLs."""
    targets: dict[tuple[str, tuple[tuple[str, int], ...]], RedisTarget] = {}
    for url in [app_settings.REDIS_URL, *app_settings.REDIS_SHARD_URLS]:
        target = parse_redis_url(url)
        if target.is_sentinel:
            targets.setdefault((target.master_name, tuple(target.sentinels)), target)
    return list(targets.values())


async def _watch_all() -> None:
    targets = _sentinel_targets()
    if targets:
        await asyncio.gather(*(_watch(target) for target in targets))


async def _watch(target: RedisTarget) -> None:
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
    lambda loop: loop.create_task(_watch_all(), name="presence-switchover")
)


def ensure_switchover_watcher() -> None:
    """Start this event loop's watchers once (a no-op without a Sentinel URL)."""
    _watchers.get()
