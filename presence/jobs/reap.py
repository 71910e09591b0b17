"""End connection sessions that presence forgot: the reaper (``presence.reap_sessions``).

The sweep ends every connection it finds in Redis. A session row can outlive that state:
Redis restarted without persistence (or was flushed) while the server process holding the
socket died too, so no heartbeat ever learns the session is gone and no sweep ever sees it.
Such rows would stay "live" in the admin forever. The reaper ends them as ``timeout``.

The reaper is one run (one SELECT of the oldest silent rows, whatever their shard), not one
per shard: it asks every shard whether it still knows each candidate's connection.

A row is a candidate when it has not been heard from (``last_heartbeat_at``, refreshed by
every stats flush, else ``connected_at``) for longer than ``PRESENCE_TTL`` plus
``PRESENCE_KEY_GRACE``; it is ended only if Redis does not know its connection either, so a
live socket whose row is merely stale (flush behind) is never touched.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from presence import store
from presence.conf import app_settings
from presence.jobs.periodic import RunReport, run_locked
from sessions_app.actions import do_end_sessions
from sessions_app.models import ConnectionSession, EndReason

logger = logging.getLogger(__name__)

TASK = "reap"
# WARNING: bounds one run (one SELECT, one Redis pipeline, a few UPDATEs). Orphans only
# appear after a Redis data loss; a large batch of them is worked off over several runs.
REAP_BATCH_SIZE = 500
REAP_TIME_LIMIT = 120


@dataclass
class ReapReport(RunReport):
    """What one reaper run did."""

    candidates: int = 0  # silent rows looked at
    still_known: int = 0  # Redis still tracks them: left to the sweep
    reaped: int = 0  # rows ended as timeout

    def totals(self) -> dict[str, int]:
        return {**super().totals(), "reaped_total": self.reaped}


def run_reap(report: ReapReport | None = None) -> ReapReport:
    """One reaper pass without the lock."""
    report = report or ReapReport()
    ttl = dt.timedelta(seconds=app_settings.TTL)
    cutoff = timezone.now() - ttl - dt.timedelta(seconds=app_settings.KEY_GRACE)
    rows = list(
        ConnectionSession.objects.live()
        .annotate(heard=Coalesce(F("last_heartbeat_at"), F("connected_at")))
        .filter(heard__lt=cutoff)
        .order_by("heard")
        .values_list("id", "heard", "user_id")[:REAP_BATCH_SIZE]
    )
    report.candidates = len(rows)
    known = _known([(str(sid), uid) for sid, _, uid in rows])
    report.still_known = len(known)
    orphans = [(str(sid), heard + ttl) for sid, heard, _ in rows if str(sid) not in known]
    report.reaped = do_end_sessions(orphans, reason=EndReason.TIMEOUT)
    if report.reaped:
        logger.warning("reaper: ended %d sessions presence no longer knew", report.reaped)
    return report


def _known(conns: list[tuple[str, int]]) -> set[str]:
    """Which of (connection id, user id) presence still tracks, on any shard.

    Every shard is asked (one pipeline per shard, two ZSCOREs per connection): a row's
    connection is normally on its user's shard, but a reaper must not end a live session
    because it looked in the wrong place, and candidates are few (silent rows, at most
    REAP_BATCH_SIZE, normally none), so the price is small and paid only after a data loss.
    """
    cids = [cid for cid, _ in conns]
    known: set[str] = set()
    if not cids:
        return known
    for shard in store.all_shards():
        known |= store.known_connections(store.client_for(shard), cids, shard=shard)
    return known


def reap_sessions() -> ReapReport:
    """One reaper run under its lock; a run that finds the lock held is counted skipped."""
    report = run_locked(TASK, REAP_TIME_LIMIT * 1000, ReapReport(), run_reap)
    if report.reaped or report.error:
        logger.info("reap: %s", report)
    elif not report.skipped:
        logger.debug("reap: %s", report)
    return report
