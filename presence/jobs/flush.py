"""The stats flush (task ``presence.flush_stats``): Redis counters into the database, once.

The hot path only increments fields of its shard's ``{S}:stats`` hash (heartbeat.lua,
connect.lua, end.lua). A flush moves them into one :class:`~presence.models.StatsBucket` row
per minute, shard by shard: one task run flushes every logical shard, each under that
shard's lock and period claim, a few shards at a time in parallel (presence/jobs/periodic.py,
``run_sharded``); the rows sum the shards. Per shard, three steps, each a small function so
tests can interrupt between any two:

1. **claim** -- ``stats_claim.lua`` RENAMEs the live hash to ``{P}:stats:claim:<flush id>``
   and registers the id in ``{P}:stats:claims``. New increments go to a fresh live hash.
2. **apply** -- one transaction inserts ``FlushRecord(flush_id)`` (unique) *first*, then
   merges the counters into the bucket of the claim's minute and into the
   ``RegisteredHandler`` rows. The record commits with the counters or not at all.
3. **release** -- after the commit, ``stats_release.lua`` deletes the claim.

Every run first finishes claims an interrupted run left (oldest first): a claim with a
FlushRecord was committed already and is only released; one without is applied. So a
``kill -9`` at any point neither loses nor double-counts an increment. While the database
is unreachable a run stops at its first write: at most one claim waits, and the hot path
keeps counting in the live hash, which is flushed once the database is back.

The same run copies last heartbeats of live sessions (expiry score - TTL) into
``ConnectionSession.last_heartbeat_at``, one UPDATE per page, for connections that
heartbeated since the previous run only (see :func:`refresh_last_heartbeats`).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import redis
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F

from presence import store
from presence.conf import app_settings
from presence.jobs.periodic import RunReport, merge_into, run_sharded
from presence.models import FlushRecord, RegisteredHandler, StatsBucket
from sessions_app.actions import do_record_heartbeats

logger = logging.getLogger(__name__)

TASK = "flush"
# Leftover claims finished per run. Normally there is none; after a database outage there
# is one (a run stops at its first failed write), a few if several runs overlapped.
FLUSH_MAX_LEFTOVER_CLAIMS = 20
# WARNING: one UPDATE ... CASE per page; 500 rows keep each statement small on any database.
HEARTBEAT_PAGE_SIZE = 500
# Bounds one run (100 UPDATEs); a larger backlog continues from the mark in the next run.
HEARTBEAT_MAX_ROWS = 50_000
# A heartbeat computed "now" just before a run but executed in Redis after the run read
# that score range (or a web server clock slightly behind) must still be picked up next time.
HEARTBEAT_MARK_MARGIN_MS = 5_000
# Hard time limit of the task, and the flush lock's lifetime (presence/tasks.py).
FLUSH_TIME_LIMIT = 60

# Stats fields with a column of their own; everything else is kept in ``counters``.
COLUMN_FIELDS = ("heartbeats", "connects", "disconnects")
PEAK_FIELDS = {"peak_users": "peak_users", "peak_conns": "peak_connections"}
HANDLER_COUNTS = ("calls", "errors", "timeouts")


@dataclass
class FlushReport(RunReport):
    """What one flush run did; stored in ``{P}:flush:last`` for metrics."""

    claims_applied: int = 0
    claims_released: int = 0  # applied by an earlier, interrupted run: only released
    fields: int = 0  # counter fields written to buckets
    traffic: int = 0  # of those, fields counting traffic (not the jobs' own task:* counts)
    heartbeat_rows: int = 0  # live sessions whose last_heartbeat_at was written
    heartbeat_pages: int = 0
    heartbeat_capped: bool = False

    def totals(self) -> dict[str, int]:
        return {
            **super().totals(),
            "claims_applied_total": self.claims_applied,
            "heartbeat_rows_total": self.heartbeat_rows,
        }


@dataclass
class HandlerDelta:
    """Counters of one message type found in a claim."""

    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    latency: Counter[str] = field(default_factory=Counter)


def new_flush_id() -> str:
    """A unique id per claim (also the FlushRecord key)."""
    return uuid.uuid4().hex


def bucket_minute(claimed_ms: int) -> dt.datetime:
    """The minute a claim is counted in: the minute it was claimed (UTC)."""
    at = dt.datetime.fromtimestamp(claimed_ms / 1000, tz=dt.UTC)
    return at.replace(second=0, microsecond=0)


def handler_deltas(counters: dict[str, int]) -> dict[str, HandlerDelta]:
    """Parse ``h:<type>:calls|errors|timeouts|lat:<bucket>`` fields (types contain no ':')."""
    deltas: dict[str, HandlerDelta] = defaultdict(HandlerDelta)
    for name, value in counters.items():
        if not name.startswith("h:"):
            continue
        parts = name[2:].split(":")
        if len(parts) == 2 and parts[1] in HANDLER_COUNTS:
            setattr(deltas[parts[0]], parts[1], getattr(deltas[parts[0]], parts[1]) + value)
        elif len(parts) == 3 and parts[1] == "lat":
            deltas[parts[0]].latency[parts[2]] += value
    return dict(deltas)


# --------------------------------------------------------------------------- the steps
def claim(client: redis.Redis, *, now: int | None = None, shard: int) -> tuple[str, int] | None:
    """Step 1: claim a shard's live counters; (flush id, claim time ms), or None if there
    were none."""
    flush_id, now = new_flush_id(), now or store.now_ms()
    if store.claim_stats(client, flush_id, now=now, shard=shard):
        return flush_id, now
    return None


def apply(flush_id: str, claimed_ms: int, counters: dict[str, int]) -> bool:
    """Step 2: write a claim's counters and its FlushRecord in one transaction.

    Returns False, writing nothing, when a FlushRecord shows the claim was applied before
    (by a run that died before releasing it, or by a concurrent run).
    """
    with transaction.atomic():
        try:
            # First statement of the transaction: it takes the write lock on SQLite, and on
            # PostgreSQL a concurrent run applying the same claim blocks here until we commit,
            # then fails on the unique flush_id. Either way exactly one run applies a claim.
            with transaction.atomic():
                FlushRecord.objects.create(flush_id=flush_id, fields=len(counters))
        except IntegrityError:
            return False
        if counters:
            _merge_bucket(bucket_minute(claimed_ms), counters)
            _merge_handlers(handler_deltas(counters))
    return True


def release(client: redis.Redis, flush_id: str, *, shard: int) -> None:
    """Step 3: forget a claim whose counters are committed."""
    store.release_stats_claim(client, flush_id, shard=shard)


def finish(
    client: redis.Redis, flush_id: str, claimed_ms: int, report: FlushReport, *, shard: int
) -> None:
    """Apply (unless applied before) and release one claim."""
    counters = store.read_stats_claim(client, flush_id, shard=shard)
    if apply(flush_id, claimed_ms, counters):
        report.claims_applied += 1
        report.fields += len(counters)
        report.traffic += sum(1 for name in counters if not name.startswith("task:"))
    else:
        report.claims_released += 1
    release(client, flush_id, shard=shard)


def _merge_bucket(minute: dt.datetime, counters: dict[str, int]) -> None:
    # The row is locked (select_for_update on PostgreSQL; on SQLite this transaction holds
    # the database write lock since its first INSERT), so a read-modify-write is safe.
    bucket, _ = StatsBucket.objects.select_for_update().get_or_create(minute=minute)
    for name in COLUMN_FIELDS:
        setattr(bucket, name, getattr(bucket, name) + counters.get(name, 0))
    for name, column in PEAK_FIELDS.items():
        setattr(bucket, column, max(getattr(bucket, column), counters.get(name, 0)))
    bucket.messages += sum(v for k, v in counters.items() if k.startswith("msg:"))
    bucket.errors += sum(v for k, v in counters.items() if k.startswith("err:"))
    detail = Counter(bucket.counters or {})
    for name, value in counters.items():
        if name not in COLUMN_FIELDS and name not in PEAK_FIELDS:
            detail[name] += value
    bucket.counters = dict(sorted(detail.items()))
    bucket.save()


def _merge_handlers(deltas: dict[str, HandlerDelta]) -> None:
    # Only rows the registry created are updated; counters of other types stay in the
    # bucket's detail. update() with F() leaves every other column of the row alone.
    if not deltas:
        return
    rows = RegisteredHandler.objects.select_for_update().filter(type__in=deltas)
    for pk, type_, latency in rows.values_list("pk", "type", "latency"):
        delta = deltas[type_]
        merged = Counter(latency or {})
        merged.update(delta.latency)
        RegisteredHandler.objects.filter(pk=pk).update(
            calls=F("calls") + delta.calls,
            errors=F("errors") + delta.errors,
            timeouts=F("timeouts") + delta.timeouts,
            latency=dict(merged),
        )


# --------------------------------------------------------------------------- heartbeats
def refresh_last_heartbeats(client: redis.Redis, report: FlushReport, *, shard: int) -> None:
    """Write ``last_heartbeat_at`` of live sessions that heartbeated since the last run.

    Last heartbeat = expiry score - TTL. The mark is an expiry score below which the database
    is known to be current: a connection whose last heartbeat came before the previous run
    started (minus a margin) was written by that run. Each run therefore reads only
    ``{P}:conns`` from max(now, mark) up -- O(connections that heartbeated), not O(live) --
    ascending in pages, and moves the mark only after its writes succeeded.
    """
    started = store.now_ms()
    mark = store.get_heartbeat_mark(client, shard=shard)
    low = max(started + 1, mark or 0)  # expiry <= now: lapsed, the sweep's business
    skip, complete = 0, False
    ttl = dt.timedelta(seconds=app_settings.TTL)
    while True:
        page = store.live_connections_page(client, low, skip, HEARTBEAT_PAGE_SIZE, shard=shard)
        if page:
            beats = [(cid, _ms_to_datetime(exp) - ttl) for cid, exp in page]
            report.heartbeat_rows += do_record_heartbeats(beats)
            report.heartbeat_pages += 1
            # Score cursor, with an offset only inside a run of equal scores (one heartbeat
            # batch shares one "now"): a page never restarts from the beginning.
            last = page[-1][1]
            ties = sum(1 for _, exp in page if exp == last)
            skip, low = (skip + ties, low) if last == low else (ties, last)
        if len(page) < HEARTBEAT_PAGE_SIZE:
            complete = True
            break
        if report.heartbeat_pages * HEARTBEAT_PAGE_SIZE >= HEARTBEAT_MAX_ROWS:
            report.heartbeat_capped = True
            break
    # Complete: everyone who heartbeated before this run (minus the margin) is written.
    # Capped: everything below the cursor is; the next run continues from there.
    new_mark = started + int(app_settings.TTL * 1000) - HEARTBEAT_MARK_MARGIN_MS
    store.set_heartbeat_mark(client, new_mark if complete else low, shard=shard)


def _ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


# --------------------------------------------------------------------------- global peaks
def sample_global_peaks(*, now: int | None = None) -> None:
    """Raise the current minute's peaks to the users and connections online now, summed
    over every shard (docs/console.md, "Peaks").

    Each shard's scripts keep that shard's exact peak, but shards peak at different moments
    and their largest is a fraction of the total (1/64 with 64 shards): the flush samples
    the global sum once per run, so a minute's peak is the larger of the two, exact at each
    flush and missing only spikes shorter than the flush interval. A failure here is only
    logged: the counters were flushed already, and the next run samples again.
    """
    try:
        users, conns = store.live_totals()
        if not users and not conns:
            return  # nobody online: no row for an idle minute
        with transaction.atomic():
            minute = bucket_minute(now or store.now_ms())
            bucket, _ = StatsBucket.objects.select_for_update().get_or_create(minute=minute)
            if users > bucket.peak_users or conns > bucket.peak_connections:
                bucket.peak_users = max(bucket.peak_users, users)
                bucket.peak_connections = max(bucket.peak_connections, conns)
                bucket.save(update_fields=["peak_users", "peak_connections"])
    except (DatabaseError, redis.RedisError) as exc:
        logger.warning("flush: could not sample the global peaks: %s", exc)


# --------------------------------------------------------------------------- runs
def run_flush(report: FlushReport | None = None) -> FlushReport:
    """Flush every shard one after another without the locks (tests, by hand)."""
    report = report or FlushReport()
    for shard in store.all_shards():
        part = FlushReport()
        flush_shard(shard, part)
        merge_into(report, part)
    return report


def flush_shard(shard: int, report: FlushReport) -> FlushReport:
    """One shard's flush without its lock: leftover claims, a new claim, last heartbeats.

    A database error ends the shard's run (recorded in the report): whatever was claimed
    stays claimed in Redis and the next run applies it.
    """
    client = store.client_for(shard)
    try:
        for flush_id, claimed_ms in store.list_stats_claims(
            client, FLUSH_MAX_LEFTOVER_CLAIMS, shard=shard
        ):
            logger.info("flush: finishing claim %s left by an interrupted run", flush_id)
            finish(client, flush_id, claimed_ms, report, shard=shard)
        claimed = claim(client, shard=shard)
        if claimed is not None:
            finish(client, *claimed, report, shard=shard)
        refresh_last_heartbeats(client, report, shard=shard)
    except DatabaseError as exc:
        report.error = f"database: {exc}"[:200]
        logger.warning("flush: database unavailable, counters stay in Redis: %s", exc)
    return report


def flush_stats(*, period: float | None = None) -> FlushReport:
    """One flush run of every shard, each under its shard's lock (and, from beat, its
    ``period`` claim); shards another run holds are skipped and counted."""
    # The lock lives as long as the task may run, so runs never overlap; a worker killed
    # holding it delays flushing by at most that, and the counters simply wait in Redis.
    report = run_sharded(
        TASK, FLUSH_TIME_LIMIT * 1000, FlushReport(), FlushReport, flush_shard, period=period
    )
    if not report.skipped:
        sample_global_peaks()
    if report.traffic or report.heartbeat_rows or report.error:
        # A summary of runs that wrote traffic (an idle run every 10 s, carrying only the
        # sweep's own run counts, would be noise: DEBUG).
        logger.info("flush: %s", report)
    else:
        logger.debug("flush: %s", report)
    return report
