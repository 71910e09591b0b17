"""Connection-session rows, written behind from the presence event log, in bulk.

The WebSocket connect path writes no SQL. ``connect.lua`` appends an ``open`` entry to the
event log (``{P}:events``, a Redis stream) in the same script that registers the connection,
and ``end.lua`` appends a ``close`` entry in the script that removes it: the log holds every
connection change, atomically with the change itself. This module turns those entries into
``sessions_app.ConnectionSession`` rows:

* ``open``  -> a row (``bulk_create(ignore_conflicts=True)``; users deleted meanwhile skipped);
* ``close`` -> the live row ended with its reason, ``ended_at`` and ``last_heartbeat_at``
  (``do_end_sessions_at``: the first ending wins). Other kinds (join, leave, ...) are skipped.

Delivery. Writers read through one consumer group (``sessions``) and XACK an entry only
after the transaction holding its rows committed, so every entry is written at least once;
both writes are idempotent, so "more than once" is harmless. A batch is one transaction,
opens applied before closes, so a close finds the row of an open read in the same batch or
any earlier one. Entries a writer read and never acknowledged (its process died, its
database write failed) stay pending in the group: their own writer retries them, and after
``PRESENCE_SESSION_LOG_CLAIM_IDLE`` any other writer takes them over with XAUTOCLAIM.

A close whose row does not exist is not simply dropped: its open may be pending at another
(slow or dead) consumer. It stays pending while any entry older than it is pending
elsewhere and is retried; once none is, its open was written, skipped (user deleted) or
trimmed away, and the close is acknowledged as an orphan.

Writers. Every web process runs an async :class:`SessionWriter` per event loop (started by
the consumer's first connection, :func:`ensure_session_writer`): XREADGROUP BLOCK, write,
XACK, in a loop; entries arriving while a write is in flight make up the next batch, so
batches grow with load by themselves. Rows appear in the admin within milliseconds.
``manage.py presence_consume`` runs :class:`SessionHandler` the same way in a long-running
reader (presence/jobs/consumers.py), whether or not a web process is alive, e.g. after a
``kill -9`` of the only one: it takes over what dead writers left. The Celery task
``presence.write_sessions`` (:func:`write_sessions`) is one bounded drain, run by hand.

Durability. The log is trimmed (``MAXLEN ~ PRESENCE_EVENT_LOG_MAXLEN``); an entry trimmed
before any writer read it is gone (it comes back without fields: counted as ``trimmed`` and
acknowledged). Rows are lost only if no writer runs while more than that many entries are
appended. docs/operations.md shows how to watch the backlog.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis
from channels.db import database_sync_to_async
from django.db import DatabaseError, transaction

from presence import store
from presence.conf import app_settings
from presence.jobs import consumers, groups
from presence.jobs.periodic import RunReport, run_locked
from presence.loops import LoopLocal
from sessions_app.actions import (
    SessionStart,
    do_end_sessions_at,
    do_start_sessions,
    known_user_ids,
)
from sessions_app.models import ConnectionSession, EndReason

logger = logging.getLogger(__name__)

TASK = "sessionlog"
GROUP = store.SESSION_LOG_GROUP
# The fallback run reads as groups.CONSUMER within groups' bounds (MAX_BATCHES of
# PRESENCE_SESSION_LOG_BATCH, TIME_BUDGET): 10,000 entries per run at the defaults, 5,000/s
# at the default 2 s period; a bigger backlog is worked off over several runs.
# The fallback task's time limits; its lock lives as long as a run may.
WRITE_SOFT_TIME_LIMIT = 8
WRITE_TIME_LIMIT = 10
# Consumers holding nothing and silent this long (web processes long gone) are forgotten.
CONSUMER_PRUNE_IDLE_MS = 3_600_000
# Retry delays after a Redis or database failure (doubling up to the maximum): never crash,
# never spin.
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
# Seconds before a writer reads again the closes it kept pending (their open was elsewhere).
RESCAN_DELAY = 1.0

KIND_OPEN = "open"
KIND_CLOSE = "close"
END_REASONS = {str(r.value): r for r in EndReason}


# --------------------------------------------------------------------------- parsing
def _ms(value: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(value) / 1000, tz=dt.UTC)


def _ip(value: str) -> str | None:
    # The column is an IP address type on PostgreSQL: anything else would fail the batch.
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def _user_id(value: str) -> int:
    # A value no primary key column can hold would fail every retry of the batch (DataError).
    uid = int(value)
    if not 0 < uid < 2**63:
        raise ValueError(f"user id out of range: {uid}")
    return uid


def parse_open(fields: dict[str, str]) -> SessionStart:
    """The row of an ``open`` entry; raises ValueError/KeyError when it is malformed."""
    return SessionStart(
        session_id=uuid.UUID(fields["c"]),
        user_id=_user_id(fields["u"]),
        channel_name=fields.get("ch", ""),
        ip=_ip(fields.get("ip", "")),
        user_agent=fields.get("ua", ""),
        connected_at=_ms(fields["t"]),
    )


@dataclass(frozen=True)
class SessionEnd:
    """What a ``close`` entry says about its row."""

    session_id: str
    reason: EndReason
    ended_at: dt.datetime
    last_heartbeat_at: dt.datetime | None


def parse_close(fields: dict[str, str]) -> SessionEnd:
    """The end of a ``close`` entry; raises ValueError/KeyError when it is malformed."""
    hb = fields.get("hb", "")
    return SessionEnd(
        session_id=str(uuid.UUID(fields["c"])),
        reason=END_REASONS[fields["why"]],
        ended_at=_ms(fields["at"]),
        last_heartbeat_at=_ms(hb) if hb else None,
    )


# --------------------------------------------------------------------------- one batch
@dataclass
class Applied:
    """What :func:`apply_entries` did with one batch."""

    done: list[str] = field(default_factory=list)  # entry ids to acknowledge
    missing: list[str] = field(default_factory=list)  # closes whose row does not exist
    opened: int = 0  # rows offered to the INSERT (existing ones are left alone)
    ended: int = 0  # live rows ended
    unknown_users: int = 0  # opens of users deleted meanwhile: no row
    trimmed: int = 0  # entries trimmed away before they were written
    malformed: int = 0


def apply_entries(entries: list[store.GroupEntry]) -> Applied:
    """Write the rows of one batch in one transaction: every open first, then the closes.

    Raises DatabaseError when the database fails; nothing is written then, and the caller
    leaves the entries pending to retry them.
    """
    applied = Applied()
    starts: list[SessionStart] = []
    ends: list[tuple[str, SessionEnd]] = []  # (entry id, end)
    for entry in entries:
        kind = entry.fields.get("k")
        try:
            if not entry.fields:
                applied.trimmed += 1
            elif kind == KIND_OPEN:
                starts.append(parse_open(entry.fields))
            elif kind == KIND_CLOSE:
                ends.append((entry.id, parse_close(entry.fields)))
                continue  # acknowledged below, once its row is known to exist
        except (
            KeyError,
            ValueError,
            OverflowError,
            OSError,
        ) as exc:  # bad times raise the last two
            applied.malformed += 1
            logger.warning("session log: malformed %s entry %s skipped: %r", kind, entry.id, exc)
        applied.done.append(entry.id)

    by_reason: dict[EndReason, list[tuple[str, dt.datetime, dt.datetime | None]]] = defaultdict(
        list
    )
    for _, end in ends:
        by_reason[end.reason].append((end.session_id, end.ended_at, end.last_heartbeat_at))
    # Read before the transaction, so that its first statement is a write: on SQLite a
    # transaction that read first fails at once ("database is locked") when another process
    # wrote meanwhile, instead of waiting for the lock.
    known = known_user_ids(s.user_id for s in starts)
    with transaction.atomic():
        applied.opened = do_start_sessions(starts, known_users=known)
        for reason, rows in by_reason.items():
            applied.ended += do_end_sessions_at(rows, reason=reason)
        existing: set[str] = set()
        if ends:
            ids = [uuid.UUID(end.session_id) for _, end in ends]
            rows_found = ConnectionSession.objects.filter(pk__in=ids).values_list("pk", flat=True)
            existing = {str(pk) for pk in rows_found}
    applied.unknown_users = len(starts) - applied.opened
    for entry_id, end in ends:
        (applied.done if end.session_id in existing else applied.missing).append(entry_id)
    return applied


def settle_missing(
    missing: list[str], oldest_elsewhere: Mapping[int, str] | None
) -> tuple[list[str], list[str]]:
    """Split closes without a row into (orphans to acknowledge, closes to keep pending).

    A close waits while an older entry of its shard is pending elsewhere (it may be its
    open: a connection's open and close are on its user's shard). Otherwise its open was
    written before, skipped or trimmed away: nothing will ever create the row.
    """
    if not oldest_elsewhere:
        return missing, []
    orphans, waiting = [], []
    for name in missing:
        bound = oldest_elsewhere.get(store.split_id(name)[0])
        if bound is None or store.stream_id_order(name) < store.stream_id_order(bound):
            orphans.append(name)
        elif store.stream_id_order(name) > store.stream_id_order(bound):
            waiting.append(name)
    return orphans, waiting


def _shards_of(names: list[str]) -> set[int]:
    return {store.split_id(name)[0] for name in names}


@dataclass
class SessionLogReport(RunReport):
    """What a writer did (one fallback run, or a web writer since it started)."""

    batches: int = 0
    entries: int = 0  # entries read (re-reads of pending ones included)
    opened: int = 0
    ended: int = 0
    unknown_users: int = 0
    trimmed: int = 0
    malformed: int = 0
    orphans: int = 0  # closes acknowledged without a row (their open was never written)
    deferred: int = 0  # closes kept pending for their open (counted per attempt)
    claimed: int = 0  # entries taken over from writers that stopped
    pruned: int = 0  # idle consumers forgotten
    capped: bool = False  # stopped by the batch or time bound of the run

    def add(self, entries: int, applied: Applied, orphans: int, deferred: int) -> None:
        """Count one written batch."""
        self.batches += 1
        self.entries += entries
        self.opened += applied.opened
        self.ended += applied.ended
        self.unknown_users += applied.unknown_users
        self.trimmed += applied.trimmed
        self.malformed += applied.malformed
        self.orphans += orphans
        self.deferred += deferred

    def totals(self) -> dict[str, int]:
        return {
            **super().totals(),
            "opened_total": self.opened,
            "ended_total": self.ended,
            "trimmed_total": self.trimmed,
        }


# --------------------------------------------------------------------------- one drain (Celery)
def drain_session_log(
    *,
    consumer: str = groups.CONSUMER,
    max_batches: int = groups.MAX_BATCHES,
    budget: float = groups.TIME_BUDGET,
    report: SessionLogReport | None = None,
) -> SessionLogReport:
    """Write what the log holds, synchronously, as ``consumer`` (one bounded drain).

    Takes over entries other writers left unacknowledged for ``PRESENCE_SESSION_LOG_CLAIM_IDLE``,
    retries this consumer's own pending entries, then reads new ones without waiting, until
    none is left, ``max_batches`` or ``budget`` seconds. A database failure ends the run with
    its entries still pending (``report.error``); Redis failures raise.
    """
    report = report or SessionLogReport()
    reading = groups.Reading()
    for entries in groups.batches(
        GROUP,
        count=app_settings.SESSION_LOG_BATCH,
        reading=reading,
        consumer=consumer,
        claim_idle_ms=int(app_settings.SESSION_LOG_CLAIM_IDLE * 1000),
        max_batches=max_batches,
        budget=budget,
    ):
        try:
            applied = apply_entries(entries)
        except DatabaseError as exc:
            report.error = f"database: {exc}"[:200]
            logger.warning("session log: database unavailable, entries stay pending: %s", exc)
            break
        orphans, deferred = settle_missing(
            applied.missing,
            store.oldest_pending(
                GROUP, skip={e.id for e in entries}, shards=_shards_of(applied.missing)
            )
            if applied.missing
            else None,
        )
        store.ack_group(GROUP, applied.done + orphans)
        report.add(len(entries), applied, len(orphans), len(deferred))
    report.claimed += reading.claimed
    report.trimmed += reading.trimmed
    report.capped = reading.capped
    report.pruned += store.prune_consumers(GROUP, idle_ms=CONSUMER_PRUNE_IDLE_MS, keep=consumer)
    return report


def lock_ttl_ms() -> int:
    """The fallback run's lock lives as long as the task may run (its hard time limit)."""
    return WRITE_TIME_LIMIT * 1000


def write_sessions() -> SessionLogReport:
    """One fallback run under its lock; a run that finds the lock held is counted skipped."""
    report = run_locked(
        TASK, lock_ttl_ms(), SessionLogReport(), lambda r: drain_session_log(report=r)
    )
    if report.claimed or report.orphans or report.trimmed or report.error:
        logger.info("session log: %s", report)
    return report


# --------------------------------------------------------------------------- log consumer
class SessionHandler:
    """The session writer of ``manage.py presence_consume`` (presence.jobs.consumers)."""

    job = TASK
    group = GROUP
    exclusive = False  # rows are idempotent and closes wait for their open: any order

    def __init__(self) -> None:
        self.batch = app_settings.SESSION_LOG_BATCH
        self.claim_idle = app_settings.SESSION_LOG_CLAIM_IDLE
        self.next_prune = 0.0

    def handle(
        self, client: redis.Redis, entries: list[store.GroupEntry], *, scan: bool
    ) -> consumers.Handled:
        """Write one batch; closes waiting for their open stay pending and are re-read."""
        applied = apply_entries(entries)  # DatabaseError: all stay pending, retried
        oldest = (
            store.oldest_pending(
                GROUP, skip={e.id for e in entries}, shards=_shards_of(applied.missing)
            )
            if applied.missing
            else None
        )
        orphans, deferred = settle_missing(applied.missing, oldest)
        return consumers.Handled(
            ack=applied.done + orphans,
            retry_in=RESCAN_DELAY if deferred else None,
            work={"opened_total": applied.opened, "ended_total": applied.ended},
        )

    def idle(self, client: redis.Redis) -> None:
        """Forget consumers of web processes long gone, once a minute."""
        now = time.monotonic()
        if now >= self.next_prune:
            self.next_prune = now + 60.0
            store.prune_consumers(GROUP, idle_ms=CONSUMER_PRUNE_IDLE_MS)

    def stop(self) -> None:
        """Nothing runs beside the reader."""


# --------------------------------------------------------------------------- web writers
def consumer_name(loop: asyncio.AbstractEventLoop) -> str:
    """``<host>-<pid>-<loop id>``: one consumer per event loop of every web process."""
    return f"{socket.gethostname()}-{os.getpid()}-{id(loop):x}"


@dataclass
class _Part:
    """One node's shards as a writer reads them, and where its reading is."""

    shards: list[int]
    # Reading this consumer's own pending entries: per shard, the id after which to read
    # (None: not scanning). A scan starts at next_scan (monotonic; None: none planned), at
    # start-up too, since a reused name may hold entries.
    cursor: store.Cursor | None = None
    next_scan: float | None = 0.0
    next_claim: float = 0.0
    group_ready: bool = False
    failing: bool = False
    idle_wait: float = 0.0


class SessionWriter:
    """One event loop's writer: XREADGROUP BLOCK, write in a thread, XACK, forever; one such
    loop per node of the presence store, over that node's shards (store.group_parts).

    While a write is in flight new entries accumulate in the stream, so the next read takes
    them all (up to ``PRESENCE_SESSION_LOG_BATCH`` per shard): one transaction per batch,
    not per row. Redis or database failures are logged once per outage and retried with a
    doubling delay; what was read stays pending and is read again first (``cursor``).
    """

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.report = SessionLogReport()
        self.task: asyncio.Task[None] | None = None
        self.parts: list[_Part] = []

    @property
    def failing(self) -> bool:
        """Whether a node's loop is failing now."""
        return any(part.failing for part in self.parts)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start (or restart) the writing task on ``loop``."""
        self.parts = [_Part(shards) for shards in store.group_parts()]
        self.task = loop.create_task(self.run(), name=f"session-writer {self.consumer}")

    def stop(self) -> None:
        """Cancel the writing task (tests; a closing loop cancels it by itself)."""
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        """Every node's loop; ends only by cancellation."""
        await asyncio.gather(*(self._run(part) for part in self.parts))

    async def _run(self, part: _Part) -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                await self.step(part)
            except Exception as exc:  # CancelledError is not an Exception: it ends the loop
                if not part.failing:  # one warning per outage, not one per retry
                    logger.warning("session writer %s failing: %r", self.consumer, exc)
                part.failing = True
                part.group_ready = False
                part.cursor, part.next_scan = None, 0.0  # re-read what stayed pending
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            else:
                if part.failing:
                    logger.info("session writer %s recovered", self.consumer)
                part.failing = False
                delay = BACKOFF_MIN

    async def step(self, part: _Part) -> None:
        """Read one batch of ``part``'s shards (pending ones first when a scan is due),
        write it, acknowledge it."""
        count = app_settings.SESSION_LOG_BATCH
        if not part.group_ready:
            await store.aensure_group(GROUP, part.shards)
            part.group_ready = True
        now = time.monotonic()
        if now >= part.next_claim:
            idle = app_settings.SESSION_LOG_CLAIM_IDLE
            part.next_claim = now + max(idle / 2, 0.1)
            claimed, trimmed = await store.aclaim_group(
                GROUP, self.consumer, min_idle_ms=int(idle * 1000), count=count, shards=part.shards
            )
            self.report.claimed += claimed
            self.report.trimmed += trimmed
            if claimed:
                part.next_scan = now
        if part.cursor is None and part.next_scan is not None and now >= part.next_scan:
            part.cursor, part.next_scan = store.start_cursor(part.shards), None
        if part.cursor is not None:
            entries = await store.aread_group(
                GROUP, self.consumer, count=count, shards=part.shards, after=part.cursor
            )
            part.cursor = store.advance_cursor(part.cursor, entries)
            if not entries:
                return  # scan done
        else:
            block = int(app_settings.SESSION_LOG_BLOCK * 1000)
            if part.next_scan is not None:  # do not sleep through a planned scan
                block = max(1, min(block, int((part.next_scan - now) * 1000)))
            entries = await store.aread_group(
                GROUP, self.consumer, count=count, shards=part.shards, block_ms=block
            )
            if store.log_polled():
                # WARNING: a Cluster writer's idle cost: wait longer while the log is quiet.
                low, high = consumers.POLL_IDLE
                part.idle_wait = 0.0 if entries else min(max(part.idle_wait * 2, low), high)
                if part.idle_wait:
                    await asyncio.sleep(min(part.idle_wait, block / 1000))
            if not entries:
                return
        await self.write(entries)

    async def write(self, entries: list[store.GroupEntry]) -> None:
        """Write one batch and acknowledge what is done; closes waiting for their open stay."""
        # The thread-sensitive thread (see presence/access/auth.py on why not another executor's):
        # a batch is one short transaction, so handshakes queue behind it only briefly.
        applied = await database_sync_to_async(apply_entries)(entries)
        oldest = (
            await store.aoldest_pending(
                GROUP, skip={e.id for e in entries}, shards=_shards_of(applied.missing)
            )
            if applied.missing
            else None
        )
        orphans, deferred = settle_missing(applied.missing, oldest)
        await store.aack_group(GROUP, applied.done + orphans)
        self.report.add(len(entries), applied, len(orphans), len(deferred))
        if deferred:
            for part in self.parts:
                if part.next_scan is None and _shards_of(deferred) & set(part.shards):
                    part.next_scan = time.monotonic() + RESCAN_DELAY


_writers: LoopLocal[SessionWriter] = LoopLocal(lambda loop: SessionWriter(consumer_name(loop)))


async def ensure_session_writer() -> SessionWriter:
    """Start this event loop's session writer on first use; after that, returns at once.

    Called by the consumer at connect. Nothing is awaited: the connect path never waits for
    the writer, which creates the consumer group itself.
    """
    writer = _writers.get()
    if writer.task is None or writer.task.done():
        writer.start(asyncio.get_running_loop())
    return writer


def running_writer() -> SessionWriter | None:
    """The running event loop's writer, if one was started (tests, diagnostics)."""
    return _writers.peek()
