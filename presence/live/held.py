"""This process's timers for the leaves the grace window held (PRESENCE_LEAVE_GRACE).

end.lua holds the leaves of a closed last connection (docs/presence.md); the process that
wrote the end releases them once due -- ``schedule_release()`` arms a timer of its event
loop -- unless the sweep got there first (or this process died: then only the sweep does).
Timers are rounded up to ``RELEASE_TICK``, so a mass disconnect arms a handful, not one
per socket; each release call takes every held leave that is due, of any process.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable

from presence import store
from presence.conf import app_settings
from presence.loops import LoopLocal

logger = logging.getLogger(__name__)

RELEASE_TICK = 0.25  # seconds
_timers: LoopLocal[dict[float, asyncio.TimerHandle]] = LoopLocal(lambda loop: {})
# The shards each timer releases on: a user's hold is on the user's shard, a room's on the
# room's (store.arelease_due reads only those, not every shard).
_shards: LoopLocal[dict[float, set[int]]] = LoopLocal(lambda loop: {})
_releasing: set[asyncio.Task[None]] = set()


def schedule_release(shards: Iterable[int] = (0,)) -> None:
    """Release the held leaves on ``shards`` once the grace window of an end written now is
    over."""
    loop = asyncio.get_running_loop()
    at = math.ceil((loop.time() + app_settings.LEAVE_GRACE) / RELEASE_TICK) * RELEASE_TICK
    timers = _timers.get()
    _shards.get().setdefault(at, set()).update(shards)
    if at not in timers:
        timers[at] = loop.call_at(at + 0.01, _start_release, timers, at)


def _start_release(timers: dict[float, asyncio.TimerHandle], at: float) -> None:
    timers.pop(at, None)
    shards = _shards.get().pop(at, {0})
    task = asyncio.get_running_loop().create_task(_release_due(shards))
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)


async def _release_due(shards: set[int]) -> None:
    try:
        await store.arelease_due(shards=shards)
    except Exception as exc:  # Redis away: the sweep releases them
        logger.info("releasing held leaves: %r (left to the sweep)", exc)
