"""Per-process batching of the hot path: heartbeats and counters share one round trip.

Every connection served by this event loop hands its heartbeat to one :class:`HotPathWriter`.
Heartbeats that arrive while a script call is in flight wait for the next call, so under
load one EVALSHA refreshes hundreds of connections; when idle, a heartbeat goes out on the
next loop iteration. Message and error counters are buffered here too and ride along with
the next heartbeat call, or go out on their own after ``PRESENCE_COUNTER_FLUSH_INTERVAL``.

``activity`` frames (``last_active``) ride the same way: the writer keeps the latest time
per user, at most one per ``PRESENCE_ACTIVITY_RESOLUTION`` per user, and the next call
carries them -- no round trip of their own.

The store away. When the call fails because the store is away (refused, timed out,
``READONLY`` from a demoted primary, ``LOADING``, ``MASTERDOWN``: presence/store/faults.py),
the batch is *held*, not failed: the writer retries with a short backoff, one call at a
time, and each heartbeat is acknowledged once the store answers -- late, with no error
frame, and the socket stays open through a failover or a pause. The hold is bounded: a
heartbeat held longer than ``PRESENCE_HEARTBEAT_HOLD`` seconds, or arriving while
``PRESENCE_HEARTBEAT_HOLD_MAX`` are already held, is answered ``unavailable`` (the client
keeps its socket and heartbeats again later). Nothing waits on the event loop: the held
heartbeats are futures in a list, the retries a task that sleeps between attempts.
The outage is logged once per ``PRESENCE_STORE_WARNING_INTERVAL`` with a count
(obs.logs.store_outage), never once per socket (docs/reliability.md).
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
from presence.obs.logs import store_outage

logger = logging.getLogger(__name__)

# Retry backoff while the store is away: fast enough that a failover's end is noticed
# within a fraction of a second, slow enough that a dead store costs a few calls per second.
RETRY_FIRST = 0.05
RETRY_MAX = 0.5


class Pending:
    """One heartbeat waiting for its batch: the connection, its future, when it arrived."""

    __slots__ = ("conn", "future", "held", "since")

    def __init__(self, conn: store.ConnRef, future: asyncio.Future[int], since: float) -> None:
        self.conn, self.future, self.since = conn, future, since
        self.held = False  # it waited through a store outage


class HotPathWriter:
    """Batches heartbeats and counter increments of one event loop into heartbeat.lua calls."""

    def __init__(self) -> None:
        self._pending: list[Pending] = []
        self._counters: Counter[str] = Counter()
        # uid -> Unix s of the latest activity to write; uid -> monotonic time it was taken,
        # for the throttle (pruned once per resolution, so it holds recent users only).
        self._active: dict[int, int] = {}
        self._active_taken: dict[int, float] = {}
        self._active_pruned = 0.0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._away_since = 0.0  # monotonic time the store was first found away (0: it is up)

    async def heartbeat(self, conn: store.ConnRef) -> int:
        """Refresh ``conn``: ``store.HB_ALIVE``, ``HB_ENDED`` or ``HB_LOST`` (re-assert it).

        Raises :class:`store.StoreUnavailableError` when the store stayed away past the hold.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        now = time.monotonic()
        if self._away_since and len(self._pending) >= app_settings.HEARTBEAT_HOLD_MAX:
            metrics.heartbeats_held("unavailable", (0.0,))
            raise store.StoreUnavailableError("the presence store is away and the hold is full")
        self._pending.append(Pending(conn, future, now))
        self._start()
        return await future

    @property
    def holding(self) -> int:
        """Heartbeats waiting for the store (0 when it is up: a batch drains at once)."""
        return len(self._pending) if self._away_since else 0

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
        delay = RETRY_FIRST
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
                        [p.conn for p in batch],
                        counters,
                        active=active,
                    )
                metrics.redis_roundtrip(time.perf_counter() - started, len(batch))
            except Exception as exc:
                self._counters.update(counters)  # kept either way: they ride with a later call
                for uid, at in active.items():  # kept too (a newer one taken meanwhile wins)
                    self._active.setdefault(uid, at)
                if store.is_unavailable(exc):
                    # The store is away: hold the batch (in front, it is the oldest) and retry.
                    self._pending = batch + self._pending
                    self._store_away(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                # Anything else is a bug or a broken key, not an outage: fail these
                # heartbeats and those queued behind them (nothing else would wake them).
                logger.error("heartbeat batch of %d failed: %r", len(batch), exc)
                failed, self._pending = batch + self._pending, []
                for p in failed:
                    if not p.future.done():
                        p.future.set_exception(exc)
                self._arm_timer()
                return
            delay = RETRY_FIRST
            if self._away_since:
                self._store_back()
            if batch and batch[0].held:  # the oldest first: none held means none in it were
                metrics.heartbeats_held(
                    "acked", [time.monotonic() - p.since for p in batch if p.held]
                )
            for p, state in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(state)

    def _store_away(self, exc: BaseException) -> None:
        """Count this failed try (once, not per heartbeat) and give up on those held too long."""
        now = time.monotonic()
        if not self._away_since:
            self._away_since = now
        for p in self._pending:
            p.held = True
        metrics.store_unavailable("heartbeat")
        store_outage.failed("heartbeat", exc)
        limit = now - app_settings.HEARTBEAT_HOLD
        expired = [p for p in self._pending if p.since <= limit or p.future.done()]
        if expired:
            self._pending = [p for p in self._pending if p.since > limit and not p.future.done()]
            waits = []
            for p in expired:
                if not p.future.done():
                    waits.append(now - p.since)
                    p.future.set_exception(
                        store.StoreUnavailableError(
                            f"the presence store was away for {app_settings.HEARTBEAT_HOLD:g} s"
                        )
                    )
            metrics.heartbeats_held("unavailable", waits)

    def _store_back(self) -> None:
        self._away_since = 0.0
        store_outage.recovered()


_writers: LoopLocal[HotPathWriter] = LoopLocal(lambda loop: HotPathWriter())

# The writer of the running event loop. WARNING: hot path: called several times per frame,
# so it is the LoopLocal's bound method itself, not a function around it.
get_writer = _writers.get
