"""The ``/metrics`` exposition: every process's counters, then presence state read from Redis.

State (who is online, the process registry, the periodic tasks' runs, ghosts) is read by
:class:`PresenceCollector` when ``/metrics`` is scraped: the same answer from every process,
whichever one the scrape reaches, and correct for the Celery workers' tasks too.
O(1)/O(log N) commands only (ZCOUNT, HGETALL of small hashes, the process records): never a
scan. The counters themselves are defined in :mod:`presence.obs.metrics`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from presence import store
from presence.jobs import catalog
from presence.live import processes
from presence.obs.buckets import DURATION_BUCKETS
from presence.obs.metrics import ensure_handler_series

logger = logging.getLogger("presence.ws")


# --------------------------------------------------------------------------- scrape time
# Work counters of the periodic tasks: metric suffix -> field of {P}:<task>:last.
TASK_WORK: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sweep": (("expired", "ended_total", "Connections the sweep ended (presence lapsed)."),),
    "flush": (
        ("claims", "claims_applied_total", "Counter claims the flush moved to the database."),
        ("heartbeat_rows", "heartbeat_rows_total", "last_heartbeat_at rows the flush wrote."),
    ),
    "reap": (("reaped", "reaped_total", "Session rows the reaper ended (presence forgot)."),),
}


def _task_histogram(task: str, raw: dict[str, str]) -> HistogramMetricFamily:
    buckets, cumulative = [], 0
    for bound in DURATION_BUCKETS:
        cumulative += int(raw.get(f"duration_le_{bound:g}") or 0)
        buckets.append((f"{bound:g}", cumulative))
    cumulative += int(raw.get("duration_le_inf") or 0)
    buckets.append(("+Inf", cumulative))
    return HistogramMetricFamily(
        f"presence_{task}_duration_seconds",
        f"Duration of {catalog.by_key(task).label} runs (any Celery process; from Redis).",
        buckets=buckets,
        sum_value=int(raw.get("duration_sum_ms") or 0) / 1000,
    )


class PresenceCollector(Collector):
    """Gauges and task metrics read from Redis at scrape time (see the module docstring)."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "presence_redis_up", "1 when this scrape could read presence state from Redis."
        )
        try:
            client = store.get_redis()
            readings = store.read_scrape(catalog.recorded_keys())
            records = processes.list_processes()
        except (RedisError, OSError) as exc:
            logger.warning("metrics: Redis unreachable at scrape: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "presence_users_online",
            "Users with at least one live connection (ZCOUNT of the users index).",
            value=readings.users_online,
        )
        yield GaugeMetricFamily(
            "presence_connections_online",
            "Live connections in Redis, all processes (ZCOUNT of the expiry index).",
            value=readings.connections_online,
        )
        yield from self._processes(records)
        yield from self._tasks(readings.tasks)
        backlog = GaugeMetricFamily(
            "presence_webhook_backlog",
            "Webhook events not delivered yet, per endpoint (as of the last routing run).",
            labels=["endpoint"],
        )
        for endpoint, n in sorted(store.read_webhook_backlog(client).items()):
            backlog.add_metric([endpoint], n)
        yield backlog
        yield from self._consumers(readings.tasks, store.groups_backlog())

    def _consumers(
        self, tasks: dict[str, dict[str, str]], groups: dict[str, dict[str, int]]
    ) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            "presence_consumer_last_success_timestamp_seconds",
            "Last read without error of each event-log consumer, any process (Unix seconds; "
            "they read at least once a second; absent: never ran).",
            labels=["consumer"],
        )
        backlog = GaugeMetricFamily(
            "presence_consumer_backlog",
            "Entries of each consumer's group: pending (read, not acknowledged) and unread.",
            labels=["consumer", "state"],
        )
        entries = CounterMetricFamily(
            "presence_consumer_entries",
            "Event-log entries each consumer handled (re-reads of pending ones included).",
            labels=["consumer"],
        )
        for job in catalog.consumers():
            raw = tasks.get(job.key, {})
            entries.add_metric([job.key], int(raw.get("entries_total") or 0))
            if raw.get("last_success_at_ms"):
                success.add_metric([job.key], int(raw["last_success_at_ms"]) / 1000)
            group = groups.get(job.group)
            if group is not None:
                backlog.add_metric([job.key, "pending"], group["pending"])
                backlog.add_metric([job.key, "unread"], group["unread"])
        yield success
        yield backlog
        yield entries

    def _processes(self, records: list[processes.ProcessRecord]) -> Iterator[Metric]:
        local = processes.local()
        if local.task is not None and not local.task.done():
            # This process's own figures live, not as of its last refresh.
            mine = local.record()
            records = [r for r in records if r["id"] != mine["id"]] + [mine]
        families = {
            "open": GaugeMetricFamily(
                "presence_connections_open",
                "WebSocket connections each web process holds (process registry).",
                labels=["process"],
            ),
            "lag": GaugeMetricFamily(
                "presence_event_loop_lag_seconds",
                "Worst delay of a timer in each process's event loop over its last refresh "
                "period: a stalled loop delays every socket it serves.",
                labels=["process"],
            ),
            "tasks": GaugeMetricFamily(
                "presence_asyncio_tasks",
                "asyncio tasks alive in each process's event loop (a leak shows as growth).",
                labels=["process"],
            ),
            "rss": GaugeMetricFamily(
                "presence_process_resident_memory_bytes",
                "Resident memory of each web process.",
                labels=["process"],
            ),
            "started": GaugeMetricFamily(
                "presence_process_start_time_seconds",
                "Start time of each web process (Unix seconds).",
                labels=["process"],
            ),
            "seen": GaugeMetricFamily(
                "presence_process_last_seen_timestamp_seconds",
                "Last refresh of each web process's registry record (Unix seconds).",
                labels=["process"],
            ),
            "info": GaugeMetricFamily(
                "presence_process_info",
                "One series per live web process: host, pid and code version.",
                labels=["process", "host", "pid", "version"],
            ),
        }
        for rec in records:
            proc = [rec["id"]]
            families["open"].add_metric(proc, rec["sockets"])
            families["lag"].add_metric(proc, rec["loop_lag_seconds"])
            families["tasks"].add_metric(proc, rec["asyncio_tasks"])
            families["rss"].add_metric(proc, rec["rss_bytes"])
            families["started"].add_metric(proc, rec["started_at"])
            families["seen"].add_metric(proc, rec["last_seen"])
            families["info"].add_metric(
                [rec["id"], rec["host"], str(rec["pid"]), rec["version"]], 1
            )
        yield from families.values()
        yield GaugeMetricFamily(
            "presence_processes", "Live web processes in the registry.", value=len(records)
        )

    def _tasks(self, tasks: dict[str, dict[str, str]]) -> Iterator[Metric]:
        for task in catalog.console_keys():
            if catalog.by_key(task).consumer:
                continue  # its own families: _consumers
            label = catalog.by_key(task).label
            raw = tasks.get(task, {})
            yield _task_histogram(task, raw)
            for suffix, field, doc in TASK_WORK[task]:
                yield CounterMetricFamily(
                    f"presence_{task}_{suffix}", doc, value=int(raw.get(field) or 0)
                )
            success = GaugeMetricFamily(
                f"presence_{task}_last_success_timestamp_seconds",
                f"End of the last {label} run without error (Unix seconds; absent: never).",
            )
            if raw.get("last_success_at_ms"):
                success.add_metric([], int(raw["last_success_at_ms"]) / 1000)
            yield success
        runs = CounterMetricFamily(
            "presence_task_runs",
            "Background job runs by outcome (ok, error, skipped: another run held the lock); "
            "a consumer counts its batches as runs and its outages as errors.",
            labels=["task", "outcome"],
        )
        for task in catalog.recorded_keys():
            raw = tasks.get(task, {})
            total, errors = int(raw.get("runs_total") or 0), int(raw.get("errors_total") or 0)
            runs.add_metric([task, "ok"], total - errors)
            runs.add_metric([task, "error"], errors)
            runs.add_metric([task, "skipped"], int(raw.get("skipped_total") or 0))
        yield runs
        rec = tasks.get("reconcile", {})
        yield GaugeMetricFamily(
            "presence_ghost_connections",
            "Connections online in Redis that no live web process holds a socket for "
            "(last reconciliation).",
            value=int(rec.get("last_ghosts") or 0),
        )
        success = GaugeMetricFamily(
            "presence_reconcile_last_success_timestamp_seconds",
            "End of the last ghost reconciliation without error (Unix seconds).",
        )
        if rec.get("last_success_at_ms"):
            success.add_metric([], int(rec["last_success_at_ms"]) / 1000)
        yield success


def multiprocess_dir() -> str | None:
    """The prometheus_client multiprocess directory, when that mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> bytes:
    """The text exposition ``/metrics`` serves: counters of every process, then Redis state."""
    ensure_handler_series()
    if multiprocess_dir():
        from prometheus_client import multiprocess

        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)
        head = generate_latest(counters)
    else:
        head = generate_latest(REGISTRY)
    state = CollectorRegistry(auto_describe=False)
    state.register(PresenceCollector())
    return head + generate_latest(state)
