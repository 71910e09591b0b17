"""Bounded, one-off reads of the event log's consumer groups: the Celery tasks run by hand.

The long-running readers are presence/jobs/consumers.py (``manage.py presence_consume``).
The Celery tasks of the session writer (group ``sessions``), the signal sender (``hooks``)
and the webhook router (``webhooks``), run by hand for a one-off drain, read the same way:
one run at a time (a task lock) under a fixed consumer name, so each run first re-reads
what the previous one read and did not acknowledge (a killed worker, a failing receiver, a
database error), then new entries, in log order, within a bounded number of batches and
seconds. The caller acknowledges what it did.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from presence import store

# One consumer per group for the Celery runs: they hold the task lock, so never read at once.
CONSUMER = "celery"
# WARNING: bounds one run. 20 batches of PRESENCE_HOOKS_BATCH (500) is 10,000 entries per
# run, 10,000/s at the default 1 s period; a bigger backlog is worked off over several runs.
MAX_BATCHES = 20
TIME_BUDGET = 5.0
# The hooks' runs' time limits; a run's lock lives as long as it may run.
SOFT_TIME_LIMIT = 12
TIME_LIMIT = 15


@dataclass
class Reading:
    """Where a run is: ``pending`` while it re-reads its own unacknowledged entries."""

    batches: int = 0
    capped: bool = False  # stopped by the batch or time bound
    pending: bool = True
    claimed: int = 0  # entries taken over from consumers that stopped (claim_idle_ms)
    trimmed: int = 0  # of those, entries Redis had already trimmed away


def batches(
    group: str,
    *,
    count: int,
    reading: Reading,
    consumer: str = CONSUMER,
    claim_idle_ms: int | None = None,
    max_batches: int = MAX_BATCHES,
    budget: float = TIME_BUDGET,
) -> Iterator[list[store.GroupEntry]]:
    """Yield batches of ``group``'s entries for ``consumer``: its pending ones first (from
    the start, so entries left pending on purpose are tried again in order), then new ones;
    without waiting. With ``claim_idle_ms``, entries other consumers left unacknowledged that
    long are taken over first (they join this consumer's pending ones). Every shard's
    stream is read; each read takes up to ``count`` entries per stream."""
    store.ensure_group(group)
    if claim_idle_ms is not None:
        claimed, trimmed = store.claim_group(
            group, consumer, min_idle_ms=claim_idle_ms, count=count
        )
        reading.claimed += claimed
        reading.trimmed += trimmed
    started = time.monotonic()
    cursor: store.Cursor | None = store.start_cursor(store.all_shards())
    while True:
        if reading.batches >= max_batches or time.monotonic() - started > budget:
            reading.capped = True
            return
        entries = store.read_group(group, consumer, count=count, after=cursor)
        if not entries:
            if cursor is None:
                return
            cursor, reading.pending = None, False
            continue
        reading.batches += 1
        yield entries
        if cursor is not None:
            cursor = store.advance_cursor(cursor, entries)
            if cursor is None:
                reading.pending = False
