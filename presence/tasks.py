"""The Celery tasks of presence: thin wrappers over the jobs in :mod:`presence.jobs`.

Every task is listed once, in :mod:`presence.jobs.catalog`, which also builds Celery beat's
schedule (``presence.celery.install`` adds it to the host's app). Each is bounded, idempotent
and safe when two run at once (atomic claims in Redis, a token lock released by
compare-and-delete, a unique FlushRecord per flush); a run that finds the lock held is
counted (``skipped_total`` in ``{P}:<task>:last``), never silent. docs/operations.md
describes how to run and watch them.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from presence.actions import revocation
from presence.hooks import dispatch, webhooks
from presence.jobs import flush, groups, periodic, reap, reconcile, sessionlog, sweep

# What a beat-scheduled run returns when its period was run by another beat's run already.
PERIOD_SKIPPED: dict[str, Any] = {"skipped": True, "why": "period"}

# The hard limit stays below PRESENCE_SWEEP_CLAIM_TIMEOUT (30 s by default): a sweep that is
# still running never has its claims taken over by another one. A run normally stops
# claiming after one period (sweep.time_budget), so these only stop a stuck run.
SWEEP_SOFT_TIME_LIMIT = 20
SWEEP_TIME_LIMIT = 25
FLUSH_SOFT_TIME_LIMIT = flush.FLUSH_TIME_LIMIT - 10
FLUSH_TIME_LIMIT = flush.FLUSH_TIME_LIMIT


@shared_task(
    name="presence.sweep_expired",
    soft_time_limit=SWEEP_SOFT_TIME_LIMIT,
    time_limit=SWEEP_TIME_LIMIT,
    ignore_result=True,
)
def sweep_expired(period: float | None = None) -> dict[str, Any]:
    """End connections whose presence lapsed: sessions, leave events, 4408 to the socket.

    ``period``: set by beat (the schedule's interval); the run claims that period first.
    """
    # Per shard: each shard's run claims its own period (presence/jobs/periodic.py).
    return sweep.sweep_expired(period=period).as_dict()


@shared_task(
    name="presence.flush_stats",
    soft_time_limit=FLUSH_SOFT_TIME_LIMIT,
    time_limit=FLUSH_TIME_LIMIT,
    ignore_result=True,
)
def flush_stats(period: float | None = None) -> dict[str, Any]:
    """Move hot-path counters into StatsBucket rows (exactly once); write last heartbeats."""
    # Per shard: each shard's run claims its own period (presence/jobs/periodic.py).
    return flush.flush_stats(period=period).as_dict()


@shared_task(
    name="presence.reap_sessions",
    soft_time_limit=reap.REAP_TIME_LIMIT - 10,
    time_limit=reap.REAP_TIME_LIMIT,
    ignore_result=True,
)
def reap_sessions(period: float | None = None) -> dict[str, Any]:
    """End session rows whose connection presence forgot (e.g. after a Redis data loss);
    write operators' blocks to Redis again (a Redis that lost its data lost them too)."""
    if not periodic.claim_period(reap.TASK, period):
        return PERIOD_SKIPPED
    revocation.publish_blocks()
    return reap.reap_sessions().as_dict()


@shared_task(
    name="presence.write_sessions",
    soft_time_limit=sessionlog.WRITE_SOFT_TIME_LIMIT,
    time_limit=sessionlog.WRITE_TIME_LIMIT,
    ignore_result=True,
)
def write_sessions() -> dict[str, Any]:
    """One bounded drain of the session log (by hand; ``presence_consume`` reads it for good)."""
    return sessionlog.write_sessions().as_dict()


@shared_task(
    name="presence.reconcile_connections",
    soft_time_limit=50,
    time_limit=60,
    ignore_result=True,
)
def reconcile_connections(period: float | None = None) -> dict[str, Any]:
    """Count ghosts: connections online in Redis that no live web process holds a socket for."""
    if not periodic.claim_period(reconcile.TASK, period):
        return PERIOD_SKIPPED
    return reconcile.reconcile_connections().as_dict()


# ---- server-side hooks (presence/hooks/, docs/hooks.md)
@shared_task(
    name="presence.send_signals",
    soft_time_limit=groups.SOFT_TIME_LIMIT,
    time_limit=groups.TIME_LIMIT,
    ignore_result=True,
)
def send_signals(period: float | None = None) -> dict[str, Any]:
    """One bounded pass of the signal sender (by hand; ``presence_consume`` runs it for good)."""
    if not periodic.claim_period(dispatch.TASK, period):
        return PERIOD_SKIPPED
    return dispatch.send_signals().as_dict()


@shared_task(
    name="presence.route_webhooks",
    soft_time_limit=groups.SOFT_TIME_LIMIT,
    time_limit=groups.TIME_LIMIT,
    ignore_result=True,
)
def route_webhooks(period: float | None = None) -> dict[str, Any]:
    """One bounded routing pass, deliveries started as tasks (by hand; ``presence_consume``
    routes and delivers for good)."""
    if not periodic.claim_period(webhooks.TASK, period):
        return PERIOD_SKIPPED
    return webhooks.safe_route().as_dict()


# Upper bounds only: each run is started with its own limits (webhooks.delivery_time_limit,
# from the configured budget and timeout), which also bound its lock.
@shared_task(
    name="presence.deliver_webhooks", soft_time_limit=110, time_limit=120, ignore_result=True
)
def deliver_webhooks(endpoint_id: int) -> dict[str, int]:
    """POST one endpoint's due events in batches, in log order, signed; retries back off."""
    return webhooks.deliver(endpoint_id).as_dict()
