"""Long-running readers of the event log's consumer groups (``manage.py presence_consume``).

Each reader (:class:`LogConsumer`) loops: XREADGROUP ... BLOCK on its group, hands the batch
to its :class:`Handler` (write session rows, send signals, route webhooks), XACKs what the
handler says is done, and reads again. The log is one stream per shard: a handler runs one
reader per node of the presence store, each over that node's shards (one XREADGROUP names
all their streams). Nothing is polled, except on a Redis Cluster (one XREADGROUP cannot name
two slots: one non-blocking read per shard in one pipeline, then a short wait while quiet).
An event is read the moment it is appended, and while a batch is being worked on new
entries pile up and make the next batch, so batches grow with load by themselves.

Delivery guarantees are those of the groups (presence/store/groups.py): an entry is
acknowledged only after its work is done. Entries a reader keeps pending on purpose (a
held user, a close waiting for its open) are re-read from its own pending list after
``Handled.retry_in``; entries a dead reader (``kill -9``, a lost host) left pending are
taken over with XAUTOCLAIM once they were idle for the handler's ``claim_idle`` seconds.

Failures never end the loop: a Redis or database error is logged once per outage (one INFO
line when it recovers), retried with a doubling delay, and the reader re-reads its own
pending entries first. Stopping (SIGTERM) sets an event that the loop checks between
reads; a read blocks at most ``BLOCK_MAX`` seconds, so a reader ends within about that
plus the batch in progress.

Each reader records its liveness under its job's key (``{P}:<job>:last``, as the periodic
tasks do) at most once per ``RECORD_EVERY``: ``last_success_at_ms`` is the last time it read
its group without error, whether or not anything came. The dashboard, /metrics, /readyz and
``presence_status`` show that age as the consumer's lag (presence/jobs/catalog.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis
from django.db import DatabaseError, close_old_connections

from presence import store
from presence.jobs.periodic import duration_fields

logger = logging.getLogger(__name__)

# WARNING: the longest a read blocks, so the longest a stopping reader waits before it sees
# the stop (plus the batch in progress). Below PRESENCE_REDIS_SOCKET_TIMEOUT (3 s): a
# blocking read must answer before the socket gives up on it.
BLOCK_MAX = 1.0
# Retry delays after a failure (doubling up to the maximum): never crash, never spin.
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
# Seconds between two liveness records of one reader (one small pipeline each).
RECORD_EVERY = 1.0
# An exclusive reader's lease (a task lock, ``consumer-<job>``): extended at every read, so it
# lapses this long after its holder died; a standby process tries to take it this often.
LEASE_TTL = 5.0
LEASE_RETRY = 1.0
# A Cluster reader's wait after an empty read (doubling from the first to the second): a
# round of one read per shard costs ~7 ms of Python for 64 shards (docs/performance.md), so
# a quiet log is polled once a second; entries written meanwhile wait at most that long.
POLL_IDLE = (0.01, 1.0)
# Errors a reader survives: Redis gone or restarting, the database failing, a closed socket.
TRANSIENT = (redis.RedisError, DatabaseError, OSError)


@dataclass
class Handled:
    """What a handler did with one batch."""

    ack: list[str]
    retry_in: float | None = None
    """Some entries stay pending on purpose: re-read them after this many seconds."""
    work: dict[str, int] = field(default_factory=dict)
    """Counts to add to the job's totals (``<name>_total`` fields)."""


class Handler(Protocol):
    """The work of one consumer group."""

    job: str  # its key in presence.jobs.catalog (where its liveness is recorded)
    group: str
    batch: int  # entries per read
    claim_idle: float  # seconds before another reader's unacknowledged entries are taken
    exclusive: bool  # one reader at a time in the deployment (order matters): a lease

    def handle(
        self, client: redis.Redis, entries: list[store.GroupEntry], *, scan: bool
    ) -> Handled:
        """Do the work of ``entries`` (``scan``: re-reading this reader's own pending ones)."""
        ...

    def idle(self, client: redis.Redis) -> None:
        """Called after each read, busy or not: periodic chores (retries due, clean-up)."""
        ...

    def stop(self) -> None:
        """The reader is stopping: end helpers (threads) of the handler."""
        ...


def consumer_name(job: str) -> str:
    """``<host>-<pid>-<job>``: distinct for every process, so readers scale by running more."""
    return f"{socket.gethostname()}-{os.getpid()}-{job}"


class LogConsumer:
    """One reader of one consumer group, looping until ``stopping`` is set."""

    def __init__(
        self,
        handler: Handler,
        stopping: threading.Event,
        name: str = "",
        *,
        shards: list[int] | None = None,
        part: int = 0,
    ) -> None:
        self.handler = handler
        self.stopping = stopping
        self.name = name or consumer_name(handler.job)
        # The shards this reader follows (one node's; None: every shard) and which reader of
        # the handler it is (its lease, when exclusive, is its own: per-shard order is all
        # the order there is).
        self.shards = shards
        self.part = part
        # Re-reading this reader's own pending entries: per shard, the id after which to read
        # (None: not scanning); a scan is due at next_scan (monotonic; None: none planned).
        # One runs at start-up: a reused name may hold entries.
        self.cursor: store.Cursor | None = None
        self.idle_wait = 0.0
        self.next_scan: float | None = 0.0
        self.next_claim = 0.0
        self.group_ready = False
        self.failing = False
        self.last_record = 0.0
        self.pending_totals: dict[str, int] = {}
        self.lease: str | None = None  # the token of this reader's lease, when it holds it
        self.claim_all = False  # the next claim takes every pending entry (a new lease)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Read, work, acknowledge until stopped; failures are retried, never raised."""
        delay = BACKOFF_MIN
        logger.debug("consumer %s started", self.name)
        while not self.stopping.is_set():
            try:
                self.step(store.get_redis())
            except Exception as exc:  # a bug in a handler must not end the reader either
                self._failed(exc)
                self.stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            else:
                if self.failing:
                    logger.info("consumer %s recovered", self.name)
                self.failing = False
                delay = BACKOFF_MIN
        self._release()
        self.handler.stop()
        logger.debug("consumer %s stopped", self.name)

    def _failed(self, exc: BaseException) -> None:
        if not self.failing:  # one line per outage, not one per retry
            if isinstance(exc, TRANSIENT):
                logger.warning("consumer %s failing, retrying: %r", self.name, exc)
            else:
                logger.exception("consumer %s failed, retrying", self.name)
            self._record({"errors_total": 1}, error=f"{type(exc).__name__}: {exc}"[:200])
        self.failing = True
        self.group_ready = False
        self.cursor, self.next_scan = None, 0.0  # re-read what stayed pending
        if isinstance(exc, DatabaseError):
            close_old_connections()  # drop a broken connection: the next query reconnects

    @property
    def lease_name(self) -> str:
        suffix = f"-{self.part}" if self.part else ""
        return f"consumer-{self.handler.job}{suffix}"

    def _hold_lease(self, client: redis.Redis) -> bool:
        """Whether this reader may read its exclusive group now (takes or extends the lease)."""
        ttl = int(LEASE_TTL * 1000)
        if self.lease is not None:
            if store.extend_task_lock(client, self.lease_name, self.lease, ttl):
                return True
            logger.warning("consumer %s lost its lease (a read outlasted it?)", self.name)
            self.lease = None
        self.lease = store.acquire_task_lock(client, self.lease_name, ttl)
        if self.lease is None:
            return False
        logger.info("consumer %s is the active reader of %s", self.name, self.handler.group)
        # What the last holder left pending is taken over at once (nobody else reads this
        # group now) and read first, so the order holds across a takeover.
        self.cursor, self.next_scan, self.next_claim, self.claim_all = None, 0.0, 0.0, True
        return True

    def _release(self) -> None:
        if self.lease is None:
            return
        try:  # a standby takes over at once instead of after LEASE_TTL
            store.release_task_lock(store.get_redis(), self.lease_name, self.lease)
        except TRANSIENT:
            pass
        self.lease = None

    def step(self, client: redis.Redis) -> None:
        """One read (pending entries first when a scan is due), its work and its acks."""
        h = self.handler
        if h.exclusive and not self._hold_lease(client):
            self.stopping.wait(LEASE_RETRY)  # standby: another process reads this group
            return
        if not self.group_ready:
            store.ensure_group(h.group, self.shards)
            self.group_ready = True
        now = time.monotonic()
        if now >= self.next_claim:
            self.next_claim = now + max(h.claim_idle / 2, 0.1)
            idle_ms = 0 if self.claim_all else int(h.claim_idle * 1000)
            claimed, _ = store.claim_group(
                h.group, self.name, min_idle_ms=idle_ms, count=h.batch, shards=self.shards
            )
            self.claim_all = False
            if claimed:
                logger.info(
                    "consumer %s took over %d entries of a stopped reader", self.name, claimed
                )
                self.next_scan = now
        if self.cursor is None and self.next_scan is not None and now >= self.next_scan:
            self.cursor = store.start_cursor(self.shards or store.all_shards())
            self.next_scan = None
        scan = self.cursor is not None
        if self.cursor is not None:
            entries = store.read_group(
                h.group, self.name, count=h.batch, shards=self.shards, after=self.cursor
            )
            self.cursor = store.advance_cursor(self.cursor, entries)
        else:
            block = BLOCK_MAX
            if self.next_scan is not None:  # do not sleep through a planned scan
                block = min(block, self.next_scan - now)
            entries = store.read_group(
                h.group,
                self.name,
                count=h.batch,
                shards=self.shards,
                block_ms=max(1, int(block * 1000)),
            )
            if store.log_polled():
                # WARNING: a Cluster reader's idle cost: wait longer while the log is quiet.
                low, high = POLL_IDLE
                self.idle_wait = 0.0 if entries else min(max(self.idle_wait * 2, low), high)
                if self.idle_wait:
                    self.stopping.wait(min(self.idle_wait, block))
        started = time.monotonic()
        if entries:
            handled = h.handle(client, entries, scan=scan)
            store.ack_group(h.group, handled.ack)
            if handled.retry_in is not None:
                due = time.monotonic() + handled.retry_in
                self.next_scan = due if self.next_scan is None else min(self.next_scan, due)
            work = {"entries_total": len(entries), "runs_total": 1, **handled.work}
            work.update(duration_fields(int((time.monotonic() - started) * 1000)))
            for name, n in work.items():
                self.pending_totals[name] = self.pending_totals.get(name, 0) + n
        h.idle(client)
        if time.monotonic() - self.last_record >= RECORD_EVERY:
            self._record(self.pending_totals)
            self.pending_totals = {}

    def _record(self, totals: dict[str, int], *, error: str = "") -> None:
        """This reader is alive (or failing): the job's run record, one pipeline."""
        self.last_record = time.monotonic()
        now = store.now_ms()
        last: dict[str, int | str] = {"last_finished_at_ms": now, "last_error": error}
        if not error:
            last["last_success_at_ms"] = now
            last["last_consumer"] = self.name
        try:
            store.record_task_run(store.get_redis(), self.handler.job, last, totals)
        except TRANSIENT:
            pass  # Redis is what failed: the record waits for it like everything else


def run_consumers(
    handlers: list[Handler], stopping: threading.Event, *, join_timeout: float = 4.0
) -> list[threading.Thread]:
    """Run one reader per handler and node of the presence store, each in its own thread,
    until ``stopping`` is set; returns the threads still alive after ``join_timeout`` seconds
    (a batch that would not end)."""
    parts = store.group_parts()
    threads = [
        threading.Thread(
            target=LogConsumer(h, stopping, shards=shards, part=i).run,
            name=f"consumer-{h.job}" + (f"-{i}" if i else ""),
            daemon=True,
        )
        for h in handlers
        for i, shards in enumerate(parts)
    ]
    for t in threads:
        t.start()
    while not stopping.wait(0.5):
        for t in threads:
            if not t.is_alive():  # a bug, not a transient failure: stop all, loudly
                logger.error("consumer thread %s died; stopping", t.name)
                stopping.set()
    deadline = time.monotonic() + join_timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]
