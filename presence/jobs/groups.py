"""Reading the event log through a consumer group, as the hooks' Celery runs do.

The signal sender (group ``hooks``) and the webhook router (group ``webhooks``) work like the
session writers' Celery fallback (presence/jobs/sessionlog.py), on the same store helpers: one
run at a time (a task lock) under a fixed consumer name, so each run first re-reads what the
previous one read and did not acknowledge (a killed worker, a failing receiver, a database
error), then new entries, in log order, within a bounded number of batches and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from presence import store

# One consumer per group: runs hold the task lock, so they never read concurrently.
CONSUMER = "celery"
# WARNING: bounds one run. 20 batches of PRESENCE_HOOKS_BATCH (500) is 10,000 entries per
# run, 10,000/s at the default 1 s period; a bigger backlog is worked off over several runs.
MAX_BATCHES = 20
TIME_BUDGET = 5.0
# The runs' time limits; a run's lock lives as long as it may run.
SOFT_TIME_LIMIT = 12
TIME_LIMIT = 15


@dataclass
class Reading:
    """Where a run is: ``pending`` while it re-reads its own unacknowledged entries."""

    batches: int = 0
    capped: bool = False  # stopped by MAX_BATCHES or TIME_BUDGET
    pending: bool = True


def batches(
    client: redis.Redis,
    group: str,
    *,
    count: int,
    reading: Reading,
    max_batches: int = MAX_BATCHES,
    budget: float = TIME_BUDGET,
) -> Iterator[list[store.SessionLogEntry]]:
    """Yield batches of entries: this group's pending ones first (from the start, so entries
    left pending on purpose are tried again in order), then new ones; without waiting."""
    store.ensure_session_group(client, group=group)
    started = time.monotonic()
    cursor: str | None = "0"
    while True:
        if reading.batches >= max_batches or time.monotonic() - started > budget:
            reading.capped = True
            return
        entries = store.read_session_log(client, CONSUMER, count=count, after=cursor, group=group)
        if not entries:
            if cursor is None:
                return
            cursor, reading.pending = None, False
            continue
        reading.batches += 1
        yield entries
        if cursor is not None:
            cursor = entries[-1].id
