"""Two beat processes (a deploy that briefly runs two) still sweep, flush and reap once per
period: each scheduled run claims its period in Redis.

The finding reproduced: with two beats, every period ran twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from presence import store

# serial: it counts runs per period of 1 s, which the other workers' load would stretch.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(90),
]

PERIOD = 1.0
FAST = {
    "PRESENCE_SWEEP_INTERVAL": str(PERIOD),
    "STATS_FLUSH_INTERVAL": str(PERIOD),
    "PRESENCE_REAP_INTERVAL": str(PERIOD),
}
WATCH = 8.0  # seconds the two beats run side by side


SHARDED = ("sweep", "flush")  # per-shard jobs: each shard's run claims its own period


def totals(r: redis.Redis, task: str) -> tuple[int, int]:
    """(runs, skips) of ``task``; for a per-shard job in shards' runs, divided by the shard
    count: two beats' runs of one period may split the shards between them, each shard once."""
    run = store.read_task_run(r, task)
    if task in SHARDED:
        n = store.shard_count()
        return int(run.get("shard_runs_total", 0)) // n, int(run.get("shard_skips_total", 0)) // n
    return int(run.get("runs_total", 0)), int(run.get("skipped_total", 0))


def test_each_period_runs_once(celery_worker_process: Callable[..., Any], r: redis.Redis) -> None:
    celery_worker_process(env=FAST, concurrency=2)
    celery_worker_process(env=FAST, beat=True)
    celery_worker_process(env=FAST, beat=True)
    # From the first run on, both beats are firing.
    deadline = time.monotonic() + 20
    while totals(r, "sweep")[0] == 0:
        assert time.monotonic() < deadline, "no sweep ran"
        time.sleep(0.05)
    start = {task: totals(r, task) for task in ("sweep", "flush", "reap")}

    time.sleep(WATCH)

    for task in ("sweep", "flush", "reap"):
        runs, skipped = (now - then for now, then in zip(totals(r, task), start[task], strict=True))
        # One run per period (a run may fall either side of the window's edges; for a
        # per-shard job: every shard once); two beats without the claim made two.
        assert WATCH / PERIOD - 2 <= runs <= WATCH / PERIOD + 2, (task, runs, skipped)
        # The second beat's runs were refused and counted, not silently dropped.
        assert skipped >= WATCH / PERIOD - 3, (task, runs, skipped)
