"""Per-process queue of connection ends: a closed socket's removal is never given up.

A socket that closes must leave presence at once: its ``leave`` events go out and its
session row ends from the ``close`` end.lua logs. Written one EVALSHA per socket, a mass
disconnect (thousands of sockets closing together) saturated the event loop, the bounded
calls gave up, and those users stayed listed online until their TTL lapsed and a sweep ran;
a Redis that paused or restarted did the same to every socket closing meanwhile.

Here every end of this event loop goes through one :class:`EndQueue`: ends that arrive
together are written in batches (one end.lua call per batch of ``PRESENCE_END_BATCH_MAX``),
and a batch that fails (Redis down, slow or paused) stays queued and is retried with back-off
until Redis answers. The queue is bounded (``PRESENCE_END_QUEUE_MAX``): when it is full a
closing socket's ``disconnect()`` waits for room (back-pressure) instead of dropping its end.
At a graceful shutdown the queue is drained within ``PRESENCE_END_DRAIN_TIMEOUT``
(presence/live/lifespan.py); what a killed process held is ended by the sweep after the TTL.

A batch whose answer was lost may have run: its retry finds those connections already
ended (state 0), and end.lua logs their ``close`` again, which the session writer ignores
(a row keeps its first ending). Nothing is logged twice as a ``leave``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from presence import store
from presence.conf import app_settings
from presence.live.held import schedule_release
from presence.loops import LoopLocal

logger = logging.getLogger(__name__)

RETRY_FIRST = 0.05
RETRY_MAX = 1.0  # seconds between retries while Redis does not answer: ends land soon after


class EndQueue:
    """The connection ends of one event loop, written in batches and retried until written."""

    def __init__(self) -> None:
        # cid -> (connection, reason, its waiters' future); insertion order is arrival order.
        self._pending: OrderedDict[
            str, tuple[store.ConnRef, str, asyncio.Future[store.EndResult]]
        ] = OrderedDict()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0  # batches that failed since the last one written (for the logs)

    def __len__(self) -> int:
        return len(self._pending)

    async def end(
        self, conn: store.ConnRef, *, reason: str, wait: float | None = None
    ) -> store.EndResult | None:
        """Queue the end of ``conn`` and wait for it up to ``wait`` seconds (default: the
        store's bound). None when it is not written yet: it stays queued and is retried."""
        while len(self._pending) >= app_settings.END_QUEUE_MAX:
            self._room.clear()
            await self._room.wait()  # back-pressure: the writer makes room as batches land
        entry = self._pending.get(conn.cid)
        if entry is None:  # an end already queued for this connection keeps its reason
            future = asyncio.get_running_loop().create_future()
            entry = self._pending[conn.cid] = (conn, reason, future)
        self._start()
        timeout = app_settings.REDIS_SOCKET_TIMEOUT if wait is None else wait
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(entry[2])
        except TimeoutError:
            return None

    async def drain(self, within: float) -> bool:
        """Wait until every queued end is written, up to ``within`` s; True when none is left."""
        if not self._pending:
            return True
        self._start()
        futures = [future for _, _, future in self._pending.values()]
        await asyncio.wait(futures, timeout=within)  # wait() never cancels what it waits on
        return not self._pending

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._write(), name="presence-end-queue"
            )

    async def _write(self) -> None:
        # One loop iteration lets ends that arrive together share the first batch.
        await asyncio.sleep(0)
        delay = RETRY_FIRST
        while self._pending:
            batch = self._next_batch()
            try:
                async with store.bounded():
                    results = await store.end_connections(
                        [conn for conn, _, _ in batch],
                        reason=batch[0][1],
                    )
            except Exception as exc:  # Redis down, slow or paused: keep them, try again
                self.failures += 1
                if self.failures == 1:
                    logger.warning(
                        "could not end %d closed connection(s) yet, retrying: %r",
                        len(self._pending),
                        exc,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self.failures:
                logger.warning(
                    "connection ends written again after %d failed try(s)", self.failures
                )
                self.failures = 0
            delay = RETRY_FIRST
            if any(result.held for result in results):
                # The grace window held leaves: release them when due, on the shards of
                # the users and rooms that may hold them.
                schedule_release(
                    {store.user_home(conn.uid) for conn, _, _ in batch}
                    | {store.room_home(room) for conn, _, _ in batch for room in conn.rooms}
                )
            for (conn, _, future), result in zip(batch, results, strict=True):
                self._pending.pop(conn.cid, None)
                if not future.done():
                    future.set_result(result)
            if len(self._pending) < app_settings.END_QUEUE_MAX:
                self._room.set()

    def _next_batch(self) -> list[tuple[store.ConnRef, str, asyncio.Future[store.EndResult]]]:
        """The oldest queued ends with the first one's reason (end.lua logs one reason)."""
        size, batch = app_settings.END_BATCH_MAX, []
        reason: str | None = None
        for entry in self._pending.values():
            if reason is None:
                reason = entry[1]
            if entry[1] == reason:
                batch.append(entry)
                if len(batch) >= size:
                    break
        return batch


_queues: LoopLocal[EndQueue] = LoopLocal(lambda loop: EndQueue())

# The end queue of the running event loop.
get_end_queue = _queues.get
