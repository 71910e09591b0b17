"""The expiry sweep (task ``presence.sweep_expired``): end connections whose presence lapsed.

A client that vanishes without closing (crash, network loss, a killed server process) stops
heartbeating; its score in its shard's ``{S}:conns`` falls behind "now" and listings stop
counting it at once. The sweep then does what a graceful close would have done, per shard:
one task run sweeps every logical shard, each under that shard's lock and period claim, a
few shards at a time in parallel (presence/jobs/periodic.py, ``run_sharded``). Each batch of
a shard:

1. ``claim_expired.lua`` *moves* up to ``PRESENCE_SWEEP_BATCH_SIZE`` expired connections from
   the expiry index into ``{P}:sweeping`` (claim deadline = now + claim timeout), plus claims
   a dead sweep left behind. Atomic, so concurrent sweeps never share a connection, and a
   run costs O(expired): with nothing expired it is one cheap round trip.
2. ``end.lua`` (mode ``swept``) removes them from presence unless they heartbeated since
   the claim (heartbeat.lua drops the claim; such a connection stays online).
3. One UPDATE ends their ``ConnectionSession`` rows: reason ``timeout``, ``ended_at`` = the
   expiry (last heartbeat + TTL), ``last_heartbeat_at`` = expiry - TTL.
4. Each swept socket's channel gets ``presence.expire`` so a socket that is in fact still
   open, on whatever server process, closes with 4408. The leaves (for users whose last
   connection, globally or in a room, it was) and the ``close`` entries were logged by
   end.lua in step 2, atomically with the removal: a sweep killed at any point loses none.
5. ``sweep_ack.lua`` releases the claims.

A crash anywhere before 5 leaves claims that expire and are taken again by a later run;
every step is idempotent (end.lua reports "already ended", the UPDATE only touches live
rows), so nothing is lost and nothing is ended twice. If the database is down at step 3,
steps 4 still happen (Redis is the truth about presence) and the claims are kept, so the
rows are ended by a later run once the database is back.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass

import redis
from asgiref.sync import async_to_sync
from django.db import DatabaseError, transaction

from presence import store
from presence.actions import connections as actions
from presence.conf import app_settings
from presence.jobs.periodic import RunReport, merge_into, run_sharded
from sessions_app.actions import do_end_sessions_at
from sessions_app.models import ConnectionSession, EndReason

logger = logging.getLogger(__name__)

TASK = "sweep"
# WARNING: bounds one run. A backlog (e.g. every client of a crashed server process at once)
# is worked off over several periods instead of one run that outlives its lock, its claims
# or the task time limit; 20 batches of 500 is 10,000 connections per run (2,000/s at the
# default 5 s period), far above the rate at which clients normally vanish.
SWEEP_MAX_BATCHES = 20


@dataclass
class SweepReport(RunReport):
    """What one sweep run did; stored in ``{P}:sweep:last`` for metrics."""

    batches: int = 0
    claimed: int = 0  # connections claimed (re-claims included)
    reclaimed: int = 0  # claims taken over from a sweep that died
    ended: int = 0  # removed from presence by this run (leaves computed)
    already_ended: int = 0  # closed meanwhile, ended by a dead sweep, or keys gone
    rescued: int = 0  # heartbeated after the claim: left online
    sessions_ended: int = 0  # database rows this run ended
    expire_sent: int = 0  # presence.expire messages sent to sockets
    released: int = 0  # held leaves (the grace window) logged by this run
    repaired: int = 0  # room members a half-done join or end left, removed (leave logged)
    capped: bool = False  # stopped by SWEEP_MAX_BATCHES or the time budget

    def totals(self) -> dict[str, int]:
        return {
            **super().totals(),
            "ended_total": self.ended,
            "sessions_ended_total": self.sessions_ended,
        }

    def stats_counters(self, task: str) -> dict[str, int]:
        return {f"task:{task}:runs": 1, f"task:{task}:ended": self.ended}


def ms_to_datetime(ms: int) -> dt.datetime:
    """An aware UTC datetime from a score in milliseconds."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def lock_ttl_ms() -> int:
    """How long a run holds the sweep lock.

    Short on purpose: the lock only spares duplicate runs (two beats, an overlapping run);
    correctness comes from the atomic claims. A worker killed while holding it delays the
    next sweep by at most this, which the latency target (TTL + interval + 1 s) tolerates
    only if it stays close to the interval.
    """
    return int(max(2 * app_settings.SWEEP_INTERVAL, 1.0) * 1000)


def time_budget() -> float:
    """Seconds after which a run claims no new batch (it finishes the current one).

    Well under the claim timeout, so a live sweep never sees its claims taken over, and
    about one period, so a backlog does not make runs pile up behind the lock.
    """
    return min(app_settings.SWEEP_INTERVAL, app_settings.SWEEP_CLAIM_TIMEOUT / 3)


def sweep_batch(
    client: redis.Redis, batch: store.ClaimBatch, report: SweepReport, *, shard: int
) -> bool:
    """End one claimed batch (steps 2-5 above); False when the database was unavailable."""
    claims = batch.claims
    known = [c for c in claims if c.uid is not None]
    results = store.end_swept_connections([c.ref for c in known], shard=shard) if known else []
    states = {r.cid: r.state for r in results}
    # No hash (state missing): the connection was ended meanwhile or its keys expired after a
    # long outage; its session may still be live in the database, so it is ended all the same.
    to_end = [c for c in claims if states.get(c.cid, 0) != -1]
    report.ended += sum(1 for s in states.values() if s == 1)
    report.rescued += sum(1 for s in states.values() if s == -1)
    report.already_ended += len(to_end) - sum(1 for s in states.values() if s == 1)

    ttl = dt.timedelta(seconds=app_settings.TTL)
    ends = [(c.cid, ms_to_datetime(c.expiry), ms_to_datetime(c.expiry) - ttl) for c in to_end]
    channels = {c.cid: c.channel for c in to_end if c.channel}
    db_ok = True
    try:
        unknown = [c.cid for c in to_end if c.cid not in channels]
        if unknown:
            # Only the database still knows where these sockets are (if they are open at all).
            channels.update(_live_channels(unknown))
        with transaction.atomic():
            report.sessions_ended += do_end_sessions_at(ends, reason=EndReason.TIMEOUT)
    except DatabaseError as exc:
        db_ok = False
        report.error = f"database: {exc}"[:200]
        logger.warning(
            "sweep: database unavailable, %d claims kept for retry: %s", len(claims), exc
        )

    # end.lua logged the leaves with the state change; the sockets are told even without
    # the database: Redis decided these connections are gone.
    report.expire_sent += async_to_sync(actions.do_notify_swept)(list(channels.values()))
    if db_ok:
        store.ack_swept(client, batch.deadline, [c.cid for c in claims], shard=shard)
    return db_ok


def _live_channels(cids: list[str]) -> dict[str, str]:
    ids = []
    for cid in cids:
        try:
            ids.append(uuid.UUID(cid))
        except ValueError:
            continue  # not a session id
    rows = ConnectionSession.objects.live().filter(pk__in=ids).values_list("id", "channel_name")
    return {str(sid): name for sid, name in rows}


def run_sweep(report: SweepReport | None = None) -> SweepReport:
    """Sweep every shard one after another without the locks (tests, by hand)."""
    report = report or SweepReport()
    for shard in store.all_shards():
        part = SweepReport()
        sweep_shard(shard, part)
        merge_into(report, part)
    return report


def sweep_shard(shard: int, report: SweepReport) -> SweepReport:
    """Sweep one shard without its lock: batches until none is left, the cap or the time
    budget; then the shard's half-done rooms (store.repair_rooms: a process killed between
    the user half and the room half of a join or an end) and its due held leaves."""
    client = store.client_for(shard)
    size = app_settings.SWEEP_BATCH_SIZE
    timeout_ms = int(app_settings.SWEEP_CLAIM_TIMEOUT * 1000)
    started, budget = time.monotonic(), time_budget()
    while True:
        if report.batches >= SWEEP_MAX_BATCHES or time.monotonic() - started > budget:
            report.capped = True
            break
        batch = store.claim_expired(client, batch=size, claim_timeout_ms=timeout_ms, shard=shard)
        if not batch.claims:
            break
        report.batches += 1
        report.claimed += len(batch.claims)
        report.reclaimed += batch.reclaimed
        if not sweep_batch(client, batch, report, shard=shard):
            break  # database down: keep the claims, try again next period
        if len(batch.claims) < size:
            break
    # Room members lapsed past the key grace with no end to remove them: idempotent, so two
    # runs racing on a shard log each leave once (repair_rooms.lua).
    report.repaired += store.repair_rooms(shard)
    # Leaves the grace window held, due and not released by the process that held them (it
    # died, or its timer has not fired yet): whoever comes first logs each once.
    # Each shard keeps its own held set (a user's holds on the user's shard, a room's on
    # the room's): each shard's run releases its own.
    for _ in range(SWEEP_MAX_BATCHES):
        found, logged = store.release_due(shard=shard)
        report.released += logged
        if found < store.RELEASE_BATCH:
            break
    return report


def sweep_expired(*, period: float | None = None) -> SweepReport:
    """One sweep run of every shard, each under its shard's lock (and, from beat, its
    ``period`` claim); shards another run holds are skipped and counted."""
    report = run_sharded(
        TASK, lock_ttl_ms(), SweepReport(), SweepReport, sweep_shard, period=period
    )
    if report.ended or report.sessions_ended or report.released or report.repaired or report.error:
        logger.info("sweep: %s", report)
    return report
