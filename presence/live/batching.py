"""Per-process batching of the hot path: heartbeats and counters share one round trip.

Every connection served by this event loop hands its heartbeat to one :class:`HotPathWriter`.
Heartbeats that arrive while a script call is in flight wait for the next call, so under
load one EVALSHA refreshes hundreds of connections; when idle, a heartbeat goes out on the
next loop iteration. Message and error counters are buffered here too and ride along with
the next heartbeat call, or go out on their own after ``PRESENCE_COUNTER_FLUSH_INTERVAL``.

``activity`` frames (``last_active``) ride the same way: the writer keeps the latest time
per user, at most one per ``PRESENCE_ACTIVITY_RESOLUTION`` per user, and the next call
carries them -- no round trip of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from presence import store
from presence.conf import app_settings
from presence.loops import LoopLocal
from presence.obs import metrics

logger = logging.getLogger(__name__)


class HotPathWriter:
    """Batches heartbeats and counter increments of one event loop into heartbeat.lua calls."""

    def __init__(self) -> None:
        self._pending: list[tuple[store.ConnRef, asyncio.Future[bool]]] = []
        self._counters: Counter[str] = Counter()
        # uid -> Unix s of the latest activity to write; uid -> monotonic time it was taken,
        # for the throttle (pruned once per resolution, so it holds recent users only).
        self._active: dict[int, int] = {}
        self._active_taken: dict[int, float] = {}
        self._active_pruned = 0.0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def heartbeat(self, conn: store.ConnRef) -> bool:
        """Refresh ``conn``; False when its session has ended (the caller closes with 4408)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((conn, future))
        self._start()
        return await future

    def count(self, field: str, n: int = 1) -> None:
        """Add ``n`` to a stats counter; written with the next batch (at most ~1 s later)."""
        self._counters[field] += n
        self._arm_timer()

    def activity(self, uid: int) -> bool:
        """Note that ``uid`` is active now; written with the next batch, at most once per
        ``PRESENCE_ACTIVITY_RESOLUTION`` per user. False when throttled (nothing to write).

        WARNING: hot path. No Redis call of its own: it rides with heartbeats or counters.
        """
        now, resolution = time.monotonic(), app_settings.ACTIVITY_RESOLUTION
        taken = self._active_taken.get(uid)
        if taken is not None and now - taken < resolution:
            return False
        if now - self._active_pruned >= resolution:
            self._active_pruned = now
            self._active_taken = {
                u: t for u, t in self._active_taken.items() if now - t < resolution
            }
        self._active_taken[uid] = now
        self._active[uid] = int(time.time())
        self._arm_timer()
        return True

    def _arm_timer(self) -> None:
        if self._timer is None and (self._counters or self._active):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(app_settings.COUNTER_FLUSH_INTERVAL, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._start()

    async def flush(self) -> None:
        """Write everything buffered now (used at disconnect and by tests)."""
        self._start()
        if self._task is not None:
            await asyncio.shield(self._task)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        # One loop iteration lets heartbeats that arrived together join the same batch.
        await asyncio.sleep(0)
        while self._pending or self._counters or self._active:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            size = app_settings.HEARTBEAT_BATCH_MAX
            batch, self._pending = self._pending[:size], self._pending[size:]
            counters, self._counters = self._counters, Counter()
            active, self._active = self._active, {}
            try:
                started = time.perf_counter()
                async with store.bounded():
                    results = await store.heartbeat_many(
                        store.get_async_redis(),
                        [conn for conn, _ in batch],
                        counters,
                        active=active,
                    )
                metrics.redis_roundtrip(time.perf_counter() - started, len(batch))
            except Exception as exc:  # Redis down: fail these heartbeats, keep the counters
                logger.warning("heartbeat batch of %d failed: %s", len(batch), exc)
                self._counters.update(counters)
                for uid, at in active.items():  # kept for the next call (a newer one wins)
                    self._active.setdefault(uid, at)
                # Fail those still queued behind this batch too: this drain ends here, and
                # nothing else would wake them (they would hang until the handler timeout).
                failed, self._pending = batch + self._pending, []
                for _, future in failed:
                    if not future.done():
                        future.set_exception(exc)
                self._arm_timer()
                return
            for (_, future), alive in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(alive)


_writers: LoopLocal[HotPathWriter] = LoopLocal(lambda loop: HotPathWriter())

# The writer of the running event loop. WARNING: hot path: called several times per frame,
# so it is the LoopLocal's bound method itself, not a function around it.
get_writer = _writers.get
