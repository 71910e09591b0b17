"""What every periodic presence task shares: a period claim, a run lock, a report, metrics.

Two beat schedulers started by mistake (a deploy that briefly runs two), or a run that
outlasts its period, must not double the work:

- a run scheduled by beat first claims its period (:func:`claim_period`: SET NX with a
  lifetime of most of the period), so two beats' runs of one period make one run;
- each run takes a token lock (SET NX PX, released by compare-and-delete in Lua), so two
  runs never overlap.

A run that finds the period claimed or the lock held is *skipped*, and that is counted and
logged, never silent. Runs asked for by hand (``task.delay()``) claim no period.

Per shard (:func:`run_sharded`: the sweep and the flush). Their state is the shards' own, so
one task run runs the job once per logical shard, each shard's run claiming that shard's
period and taking that shard's lock (``Keys(shard)``), in a bounded pool of threads: runs on
different Redis nodes proceed in parallel, and two task runs at once (two workers, two
beats) split the shards between them instead of doubling the work. The shards' reports are
summed into the task's one report, which is what the console, /metrics and the task's
result show (docs/operations.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any, TypedDict, TypeVar

from django.db import connections

from presence import store
from presence.jobs import catalog
from presence.obs.buckets import DURATION_BUCKETS

logger = logging.getLogger(__name__)


@dataclass
class RunReport:
    """Fields every task report has; subclasses add their counts."""

    skipped: bool = False  # another run held the lock (per shard: every shard's)
    error: str = ""
    duration_ms: int = 0
    shards: int = 0  # per-shard jobs: shards this run worked on
    shards_skipped: int = 0  # per-shard jobs: shards another run held (lock or period)

    def as_dict(self) -> dict[str, int | str]:
        """The report as flat Redis hash fields (booleans as 0/1)."""
        return {k: int(v) if isinstance(v, bool) else v for k, v in asdict(self).items()}

    def totals(self) -> dict[str, int]:
        """Running totals this run adds to (``*_total`` fields of the task's metrics hash)."""
        totals = {"runs_total": 1, "errors_total": 1 if self.error else 0}
        if self.shards or self.shards_skipped:
            # Per-shard jobs: two runs of one period (two beats) may split the shards between
            # them, so "runs" alone does not say the work ran once; shard runs do.
            totals["shard_runs_total"] = self.shards
            totals["shard_skips_total"] = self.shards_skipped
        return totals

    def stats_counters(self, task: str) -> dict[str, int]:
        """Counters this run adds to the live stats hash (kept per minute by the flush)."""
        return {}


R = TypeVar("R", bound=RunReport)


# A claim lives this share of the period: long enough that a second beat's run of the same
# period is refused, short enough that the next period's run, a little early, is not.
PERIOD_CLAIM_SHARE = 0.9


def claim_period(task: str, period: float | None) -> bool:
    """Claim the current period of ``task`` for this run; False (a counted skip) when another
    run has it. ``period`` None (a run asked for by hand) claims nothing."""
    if not period:
        return True
    client = store.get_redis()
    if store.claim_task_period(client, task, int(period * 1000 * PERIOD_CLAIM_SHARE)):
        return True
    logger.info("%s skipped: this period ran already (a second beat?)", task)
    _record(task, RunReport(skipped=True))
    return False


def run_locked(task: str, lock_ttl_ms: int, report: R, body: Callable[[R], object]) -> R:
    """Run ``body(report)`` under the task's lock and record the run in Redis.

    A held lock makes the run a counted skip. Any exception (time limit, Redis down) is
    recorded in the report and re-raised, after the lock is released.
    """
    client = store.get_redis()
    started = time.monotonic()
    token = store.acquire_task_lock(client, task, lock_ttl_ms)
    if token is None:
        logger.info("%s skipped: another run holds the lock", task)
        report.skipped = True
        _record(task, report)
        return report
    try:
        body(report)
    except BaseException as exc:
        report.error = report.error or f"{type(exc).__name__}: {exc}"[:200]
        raise
    finally:
        report.duration_ms = int((time.monotonic() - started) * 1000)
        try:
            store.release_task_lock(client, task, token)
            _record(task, report)
        except Exception:  # Redis down: the lock expires by itself
            logger.exception("%s: could not release the lock or record the run", task)
    return report


def _record(task: str, report: RunReport) -> None:
    client = store.get_redis()
    if report.skipped:
        store.record_task_run(
            client,
            task,
            {"last_skipped_at_ms": store.now_ms()},
            {"skipped_total": 1, "shard_skips_total": report.shards_skipped},
            {f"task:{task}:skipped": 1},
        )
        return
    last: dict[str, int | str] = {f"last_{k}": v for k, v in report.as_dict().items()}
    last["last_finished_at_ms"] = store.now_ms()
    if not report.error:
        last["last_success_at_ms"] = last["last_finished_at_ms"]
    # The duration histogram of presence_<task>_duration_seconds, kept in the same hash (same
    # pipeline): whichever Celery process ran the task, every scrape sees all runs.
    totals = {**report.totals(), **duration_fields(report.duration_ms)}
    store.record_task_run(client, task, last, totals, report.stats_counters(task))


# --------------------------------------------------------------------------- per shard
# WARNING: bounds the threads of one per-shard run (and so its Redis and database connections).
# Redis runs one thread per node: more threads than about two per node only queue there; the
# database takes the rows of several shards at once. Measured in docs/performance.md.
SHARD_WORKERS_PER_NODE = 2
SHARD_WORKERS_MAX = 8


def shard_workers() -> int:
    """Threads a per-shard run uses: two per Redis node the shards are on (a Cluster counts
    its primaries), at most SHARD_WORKERS_MAX; one (the caller's thread) on SQLite, which
    takes one writer at a time anyway (and whose test transactions other threads would wait
    for)."""
    db = connections["default"]
    # Inside a transaction of the caller (a test's, or a caller's atomic block) the pool's
    # threads would write on their own connections and wait on the caller's row locks while
    # the caller waits for them: seen as a hang on PostgreSQL. The caller's thread does it all.
    if db.vendor == "sqlite" or db.in_atomic_block:
        return 1
    if store.shape() == "cluster":
        client: Any = store.client_for(0)  # a RedisCluster: its primaries
        nodes = len(client.get_primaries())
    else:
        nodes = store.node_count()
    return max(1, min(SHARD_WORKERS_MAX, SHARD_WORKERS_PER_NODE * nodes, store.shard_count()))


def merge_into(total: RunReport, part: RunReport) -> None:
    """Add one shard's report to the run's: counts summed, flags or-ed, the first error kept."""
    for f in fields(part):
        if f.name in ("skipped", "duration_ms", "shards", "shards_skipped"):
            continue
        value, current = getattr(part, f.name), getattr(total, f.name)
        if isinstance(value, bool):
            setattr(total, f.name, current or value)
        elif isinstance(value, int):
            setattr(total, f.name, current + value)
        elif isinstance(value, str) and value and not current:
            setattr(total, f.name, value)


def run_sharded(
    task: str,
    lock_ttl_ms: int,
    report: R,
    make: Callable[[], R],
    body: Callable[[int, R], object],
    *,
    period: float | None = None,
) -> R:
    """Run ``body(shard, shard_report)`` for every logical shard, each under that shard's
    period claim (``period``: a beat run) and lock, in at most :func:`shard_workers` threads;
    sum the shards' reports into ``report`` and record it as the task's run.

    A shard whose period or lock another run holds is skipped (``shards_skipped``); the run
    is a counted skip when every shard was. Any exception of a shard is recorded in the
    report and re-raised once every shard finished.
    """
    started = time.monotonic()
    failures: list[BaseException] = []

    def one(shard: int) -> R | None:
        client = store.client_for(shard)
        part = make()
        if period and not store.claim_task_period(
            client, task, int(period * 1000 * PERIOD_CLAIM_SHARE), shard=shard
        ):
            return None
        token = store.acquire_task_lock(client, task, lock_ttl_ms, shard=shard)
        if token is None:
            return None
        try:
            body(shard, part)
        except BaseException as exc:
            part.error = part.error or f"{type(exc).__name__}: {exc}"[:200]
            failures.append(exc)
        finally:
            try:
                store.release_task_lock(client, task, token, shard=shard)
            except Exception:  # Redis down: the lock expires by itself
                logger.exception("%s: could not release shard %d's lock", task, shard)
        return part

    def in_thread(shard: int) -> R | None:
        try:
            return one(shard)
        finally:
            connections.close_all()  # this pool thread's database connections

    workers = shard_workers()
    if workers == 1:
        parts = [one(shard) for shard in store.all_shards()]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix=f"presence-{task}") as pool:
            parts = list(pool.map(in_thread, store.all_shards()))
    for part in parts:
        if part is None:
            report.shards_skipped += 1
        else:
            report.shards += 1
            merge_into(report, part)
    report.skipped = report.shards == 0
    report.duration_ms = int((time.monotonic() - started) * 1000)
    if report.skipped:
        logger.info("%s skipped: other runs hold every shard (or ran this period)", task)
    try:
        _record(task, report)
    except Exception:
        logger.exception("%s: could not record the run", task)
    if failures:
        raise failures[0]
    return report


# --------------------------------------------------------------------------- run durations
# Upper bounds (seconds) of the task duration histograms; fields ``duration_le_<bound>`` count
# the runs that fell in each bucket (not cumulative), ``duration_sum_ms`` their total.


def duration_bucket(seconds: float) -> str:
    """The name of the bucket a run of ``seconds`` falls in (``inf`` beyond the last bound)."""
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return f"{bound:g}"
    return "inf"


def duration_fields(duration_ms: int) -> dict[str, int]:
    """The hash fields one run of ``duration_ms`` adds to."""
    return {
        f"duration_le_{duration_bucket(duration_ms / 1000)}": 1,
        "duration_sum_ms": duration_ms,
    }


# --------------------------------------------------------------------------- reads


class TaskRun(TypedDict):
    """The last run of a periodic task and its totals, as operators see them."""

    task: str
    last_finished_at: float | None  # Unix seconds; None: never ran
    last_success_at: float | None  # the last run without error
    last_skipped_at: float | None  # the last run that found the lock held
    last_duration_seconds: float | None
    last_error: str
    runs_total: int
    skipped_total: int
    errors_total: int
    last: dict[str, str]  # every last_* field of the report (counts differ per task)


def _seconds(raw: dict[str, str], name: str) -> float | None:
    value = raw.get(name)
    return int(value) / 1000 if value else None


def parse_task_run(task: str, raw: dict[str, str]) -> TaskRun:
    """A :class:`TaskRun` from the task's Redis hash (``{P}:<task>:last``)."""
    duration = raw.get("last_duration_ms")
    return {
        "task": task,
        "last_finished_at": _seconds(raw, "last_finished_at_ms"),
        "last_success_at": _seconds(raw, "last_success_at_ms"),
        "last_skipped_at": _seconds(raw, "last_skipped_at_ms"),
        "last_duration_seconds": int(duration) / 1000 if duration else None,
        "last_error": raw.get("last_error", ""),
        "runs_total": int(raw.get("runs_total") or 0),
        "skipped_total": int(raw.get("skipped_total") or 0),
        "errors_total": int(raw.get("errors_total") or 0),
        "last": {k: v for k, v in raw.items() if k.startswith("last_")},
    }


def last_runs(tasks: tuple[str, ...] | None = None) -> dict[str, TaskRun]:
    """The last run of each periodic task (``tasks``; every job whose runs are read back by
    default: presence.jobs.catalog) from Redis, one pipeline."""
    tasks = catalog.recorded_keys() if tasks is None else tasks
    raw = store.read_task_runs(store.get_redis(), tasks)
    return {task: parse_task_run(task, raw[task]) for task in tasks}
