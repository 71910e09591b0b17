"""Ghost reconciliation: connections online in Redis that no live web process holds.

:func:`reconcile_connections` (Celery task ``presence.reconcile_connections``) compares the
connections Redis holds as online with the sockets the live processes hold (the process
registry, :mod:`presence.live.processes`): a *ghost* is online in Redis while no live process
holds its socket (its process crashed, or a disconnect was lost). Ghosts lapse at their TTL
and are swept; ghosts that persist mean the sweep is not running or connections leak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from presence import store
from presence.jobs.periodic import RunReport, run_locked

logger = logging.getLogger(__name__)


TASK = "reconcile"
# WARNING: bounds one run. Each page is one ZSCAN of a shard's index plus one pipeline of one
# SMISMEMBER per live process; a run reads at least one page per shard (64 by default); 200
# pages of up to 1,000 cover 200,000 connections (a larger deployment gets a lower bound,
# flagged ``capped``).
RECONCILE_PAGE = 1000
RECONCILE_MAX_PAGES = 200
# Clock skew between web hosts tolerated when deciding a connection is older than the
# newest refresh every live process made.
RECONCILE_SKEW_MS = 1000
GHOST_SAMPLE = 10


@dataclass
class ReconcileReport(RunReport):
    """What one reconciliation found; stored in ``{P}:reconcile:last``."""

    processes: int = 0  # live process records
    scanned: int = 0  # live connections looked at
    ghosts: int = 0  # online in Redis, held by no live process
    ghost_sample: str = ""  # a few ghost ids, for operators
    capped: bool = False  # stopped at RECONCILE_MAX_PAGES

    def totals(self) -> dict[str, int]:
        return {**super().totals(), "ghosts_found_total": self.ghosts}


def run_reconcile(report: ReconcileReport | None = None) -> ReconcileReport:
    """Count ghosts without the lock (see the module docstring)."""
    report = report or ReconcileReport()
    client = store.get_redis()
    now = store.now_ms()
    records = store.read_processes(client)
    ids = [rec["id"] for rec in records if rec.get("id")]
    report.processes = len(ids)
    # A connection newer than some process's last refresh may simply not be published yet.
    seen = [int(rec.get("last_seen") or 0) for rec in records]
    before = min([now, *seen]) - RECONCILE_SKEW_MS
    ghosts: set[str] = set()
    pages = 0
    # Every shard's expiry index, each on the node holding it; the processes' sockets are
    # control keys on REDIS_URL. The page budget is the run's, over all shards.
    for shard in store.all_shards():
        holder, cursor = store.client_for(shard), 0
        while True:
            if pages >= RECONCILE_MAX_PAGES:
                report.capped = True
                break
            cursor, cids = store.scan_live_connections(
                holder, cursor, RECONCILE_PAGE, now=now, shard=shard
            )
            pages += 1
            report.scanned += len(cids)
            held = store.connections_held(client, ids, cids)
            missing = [cid for cid in cids if cid not in held and cid not in ghosts]
            ghosts.update(
                store.connections_connected_before(holder, missing, before, now=now, shard=shard)
            )
            if cursor == 0:
                break
        if report.capped:
            break
    report.ghosts = len(ghosts)
    report.ghost_sample = ",".join(sorted(ghosts)[:GHOST_SAMPLE])
    return report


def reconcile_lock_ttl_ms() -> int:
    """The reconciliation lock: one run at a time, released at the end of each run."""
    return 60_000


def reconcile_connections() -> ReconcileReport:
    """One reconciliation under its lock; the ghost count is kept for the metrics."""
    report = run_locked(TASK, reconcile_lock_ttl_ms(), ReconcileReport(), run_reconcile)
    if report.ghosts:
        logger.warning(
            "reconcile: %d ghost connections (online in Redis, no live process holds them; "
            "e.g. %s) among %d live, %d processes",
            report.ghosts,
            report.ghost_sample,
            report.scanned,
            report.processes,
        )
    elif not report.skipped:
        logger.debug(  # every 30 s: not worth a line in the terminal
            "reconcile: no ghosts among %d live connections, %d processes",
            report.scanned,
            report.processes,
        )
    return report
