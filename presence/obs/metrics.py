"""Presence metrics for Prometheus: in-process counters, and gauges read from Redis at scrape.

Two kinds of metric, for two reasons:

* **Events counted where they happen** (connects, frames, errors, handler durations, the
  hot path's Redis round trip) are prometheus_client counters and histograms, incremented
  in memory. With ``PROMETHEUS_MULTIPROC_DIR`` set (production, ``make run``) every process
  writes them to its own file there and ``/metrics`` sums all files, so they add up across
  uvicorn workers (prometheus_client's multiprocess mode). Without it they live in the
  default registry of the process (development, tests).
* **State** (who is online, the process registry, the periodic tasks' runs, ghosts) is read
  from Redis by :class:`PresenceCollector` when ``/metrics`` is scraped: the same answer
  from every process, whichever one the scrape reaches, and correct for the Celery workers'
  tasks too. O(1)/O(log N) commands only (ZCOUNT, HGETALL of small hashes, the process
  records): never a scan.

WARNING: the hook functions below run on the hot path (per frame, per connection). They are
in-memory increments on label children resolved once and cached; no Redis call, no SQL, no
lock beyond prometheus_client's own.

Names follow Prometheus conventions: ``presence_`` prefix, counters ``_total``, durations
``_seconds``; docs/operations.md lists every metric with its meaning.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from presence import store
from presence.jobs import periodic
from presence.live import processes
from presence.protocol.closecodes import REFUSALS

if TYPE_CHECKING:
    from presence.consumers import PresenceConsumer

logger = logging.getLogger("presence.ws")

# --------------------------------------------------------------------------- in-process metrics
CONNECTS = Counter("presence_connects", "WebSocket connections accepted and registered.")
DISCONNECTS = Counter(
    "presence_disconnects",
    "Registered connections that ended, by end reason (closed, kicked, error, ...).",
    ["reason"],
)
CLOSES = Counter(
    "presence_closes",
    "WebSocket sockets that closed, by close code (refused handshakes included).",
    ["code"],
)
CONNECTS_REFUSED = Counter(
    "presence_connects_refused",
    "Connections the connect gate refused, by reason (blocked, too_many_connections, "
    "connect_rate, token_used, ...; docs/operations.md).",
    ["reason"],
)
HEARTBEATS = Counter("presence_heartbeats", "Heartbeats written to Redis (hot path batches).")
FRAMES = Counter(
    "presence_frames",
    "Client frames, by message type (registered types; 'other' else) and outcome "
    "(ok, error, dropped by the rate limit).",
    ["type", "outcome"],
)
ERRORS = Counter(
    "presence_errors", "Error frames answering client frames, by error code.", ["code"]
)
HANDLER_DURATION = Histogram(
    "presence_handler_duration_seconds",
    "Time from a frame's arrival to its handler's result, by handler (message type).",
    ["handler"],
    buckets=store.LATENCY_BUCKETS,
)
HANDLER_ERRORS = Counter(
    "presence_handler_errors",
    "Handler failures, by handler and kind (error: it raised; timeout: it overran).",
    ["handler", "kind"],
)
# Webhook deliveries (presence/hooks/webhooks.py), counted in the Celery worker that POSTed:
# with PROMETHEUS_MULTIPROC_DIR shared by the workers and the web processes, /metrics sums them.
WEBHOOK_DELIVERIES = Counter(
    "presence_webhook_deliveries",
    "Webhook POSTs by endpoint and outcome (delivered, failed, timeout).",
    ["endpoint", "outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "presence_webhook_delivery_seconds",
    "Duration of webhook POSTs, by endpoint (failed ones included).",
    ["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBHOOK_DEAD_LETTERS = Counter(
    "presence_webhook_dead_letters",
    "Webhook events that failed for PRESENCE_WEBHOOK_RETRY_FOR and became dead letters.",
    ["endpoint"],
)
REDIS_ROUNDTRIP = Histogram(
    "presence_redis_roundtrip_seconds",
    "Duration of the hot path's batched Redis call (heartbeat.lua for a batch of sockets).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

OTHER = "other"
# Close codes reported as themselves; any other code a client sends is counted as "other"
# (a client picks its own code: unbounded label values would be a cardinality leak).
KNOWN_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 1012, 1013}
    | {4401, 4403, 4408, 4410, 4429}
)
# Refused handshakes (the consumer accepted only to close with a reason): code -> reason.
REFUSAL_REASONS = {
    4401: "unauthorized (credentials missing, invalid, expired, used or revoked)",
    4403: "forbidden (the account is disabled or blocked)",
    4429: "too many connections or connection attempts",
    1013: "unavailable (the presence store is unreachable or slow)",
}

# Label children resolved once: labels() validates and takes a lock on every call.
_frames: dict[tuple[str, str], Any] = {}
_durations: dict[str, Any] = {}
_errors: dict[str, Any] = {}
_closes: dict[int, Any] = {}
_disconnects: dict[str, Any] = {}
_opened: dict[str, float] = {}  # session id -> monotonic connect time (for the duration)
_closed_sockets: weakref.WeakSet[Any] = weakref.WeakSet()  # consumers counted by socket_closed


def _initial_series() -> None:
    """Create the series every deployment has at 0, so they exist before the first event.

    In multiprocess mode a series nobody incremented is not exported at all, and alert rules
    on ``rate()`` or ``absent()`` need it to be there from the start.
    """
    from sessions_app.models import EndReason

    for reason in EndReason:
        DISCONNECTS.labels(reason.value)
    for close_code in sorted(KNOWN_CLOSE_CODES):
        CLOSES.labels(str(close_code))
    for error_code in INITIAL_ERROR_CODES:
        ERRORS.labels(error_code)
    FRAMES.labels(OTHER, "error")
    FRAMES.labels(OTHER, "dropped")
    for refusal in REFUSALS:
        CONNECTS_REFUSED.labels(refusal)


_handler_series: set[str] = set()


def ensure_handler_series() -> None:
    """Create each registered handler's series at 0 (once per type; cheap when done).

    Not at import: this module may be imported while the apps load, before the registry
    is filled. Called at each process's first connection and at every scrape.
    """
    from presence.handlers.registry import registry

    for spec in registry:
        if spec.type not in _handler_series:
            _handler_series.add(spec.type)
            FRAMES.labels(spec.type, "ok")
            HANDLER_DURATION.labels(spec.type)
            for kind in ("error", "timeout"):
                HANDLER_ERRORS.labels(spec.type, kind)


# Error codes of the protocol (docs/protocol.md) created at 0 by _initial_series.
INITIAL_ERROR_CODES = (
    "bad_frame",
    "bad_json",
    "invalid_payload",
    "unknown_type",
    "handler_disabled",
    "handler_error",
    "handler_timeout",
    "rate_limited",
    "limit_exceeded",
    "unavailable",
    "internal_error",
)


def _type_label(msg_type: str) -> str:
    # Only registered types get a series: a client cannot grow the label set by inventing
    # types (the same rule the stats hash follows). Called once per (type, outcome) pair.
    from presence.handlers.registry import registry  # here: the handlers import the hot path

    return msg_type if msg_type in registry else OTHER


def _frame_child(msg_type: str, outcome: str) -> Any:
    child = _frames.get((msg_type, outcome))
    if child is None:
        label = _type_label(msg_type)
        child = FRAMES.labels(label, outcome)
        if label != OTHER:  # never cache what a client typed: the cache would grow with it
            _frames[(msg_type, outcome)] = child
    return child


_initial_series()


# --------------------------------------------------------------------------- hot-path hooks
def connection_opened(consumer: PresenceConsumer) -> None:
    """A socket is registered in presence: count it, track it, bind the log context."""
    from presence.obs.logs import bind_connection

    CONNECTS.inc()
    if not _handler_series:
        ensure_handler_series()
    sid = consumer.session_id
    _opened[sid] = time.monotonic()
    processes.ensure_started()
    processes.track_open(sid)
    bind_connection(sid, consumer.user_id)
    logger.info(
        "connect protocol=%d",
        consumer.protocol,
        extra={"session_id": sid, "user_id": consumer.user_id, "event": "connect"},
    )


def socket_closed(consumer: PresenceConsumer, code: int) -> None:
    """Any socket closed (first thing in ``disconnect``); logs refused handshakes.

    Counted once per socket: ``disconnect`` may run twice (a failing consumer's cleanup).
    """
    if consumer in _closed_sockets:
        return
    _closed_sockets.add(consumer)
    child = _closes.get(code)
    if child is None:
        if code in KNOWN_CLOSE_CODES:
            child = _closes[code] = CLOSES.labels(str(code))
        else:  # a code the client chose: not cached either
            child = CLOSES.labels(OTHER)
    child.inc()
    if not consumer.registered:
        reason = REFUSAL_REASONS.get(code, f"closed with {code} before registering")
        user = consumer.scope.get("user")
        uid = getattr(user, "pk", None) if getattr(user, "is_authenticated", False) else None
        logger.info(
            "handshake refused: %s",
            reason,
            extra={
                "session_id": getattr(consumer, "session_id", None),
                "user_id": uid,
                "event": "refused",
                "code": code,
                "reason": reason,
            },
        )


def connection_ended(consumer: PresenceConsumer, code: int) -> None:
    """A registered connection ended (its end reason is final): count, untrack, log."""
    reason = consumer.end_reason.value
    child = _disconnects.get(reason)
    if child is None:
        child = _disconnects[reason] = DISCONNECTS.labels(reason)
    child.inc()
    sid = consumer.session_id
    processes.track_close(sid)
    started = _opened.pop(sid, None)
    duration = time.monotonic() - started if started is not None else 0.0
    logger.info(
        "disconnect code=%s reason=%s duration=%.3fs",
        code,
        reason,
        duration,
        extra={
            "session_id": sid,
            "user_id": consumer.user_id,
            "event": "disconnect",
            "code": code,
            "reason": reason,
            "duration_seconds": round(duration, 3),
        },
    )


def handler_called(msg_type: str, seconds: float) -> None:
    """A handler returned or raised after ``seconds`` (from the frame's arrival)."""
    child = _durations.get(msg_type)
    if child is None:
        child = _durations[msg_type] = HANDLER_DURATION.labels(msg_type)
    child.observe(seconds)


def connect_refused(reason: str) -> None:
    """The connect gate (connect.lua) refused a connection for ``reason``."""
    CONNECTS_REFUSED.labels(reason).inc()


def frame_ok(msg_type: str) -> None:
    """A frame was handled without error."""
    _frame_child(msg_type, "ok").inc()


def frame_error(msg_type: str, code: str) -> None:
    """A frame was answered with an error frame carrying ``code``."""
    _frame_child(msg_type, "error").inc()
    child = _errors.get(code)
    if child is None:
        child = _errors[code] = ERRORS.labels(code)
    child.inc()
    if code in ("handler_error", "handler_timeout"):
        kind = "timeout" if code == "handler_timeout" else "error"
        HANDLER_ERRORS.labels(_type_label(msg_type), kind).inc()


def frame_dropped(code: str = "rate_limited") -> None:
    """A frame was dropped unread (rate limit): counted as an error of ``code``."""
    _frame_child("", "dropped").inc()
    child = _errors.get(code)
    if child is None:
        child = _errors[code] = ERRORS.labels(code)
    child.inc()


def webhook_delivery(endpoint: str, outcome: str, seconds: float) -> None:
    """Count one webhook POST (a Celery worker, never the hot path)."""
    WEBHOOK_DELIVERIES.labels(endpoint, outcome).inc()
    WEBHOOK_LATENCY.labels(endpoint).observe(seconds)


def webhook_dead_letters(endpoint: str, n: int) -> None:
    """Count events that became dead letters."""
    WEBHOOK_DEAD_LETTERS.labels(endpoint).inc(n)


def redis_roundtrip(seconds: float, heartbeats: int) -> None:
    """One batched hot-path call took ``seconds`` and refreshed ``heartbeats`` sockets."""
    REDIS_ROUNDTRIP.observe(seconds)
    if heartbeats:
        HEARTBEATS.inc(heartbeats)


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
TASK_LABELS = {"sweep": "sweep", "flush": "stats flush", "reap": "session reaper"}


def _task_histogram(task: str, raw: dict[str, str]) -> HistogramMetricFamily:
    buckets, cumulative = [], 0
    for bound in periodic.DURATION_BUCKETS:
        cumulative += int(raw.get(f"duration_le_{bound:g}") or 0)
        buckets.append((f"{bound:g}", cumulative))
    cumulative += int(raw.get("duration_le_inf") or 0)
    buckets.append(("+Inf", cumulative))
    return HistogramMetricFamily(
        f"presence_{task}_duration_seconds",
        f"Duration of {TASK_LABELS[task]} runs (any Celery process; from Redis).",
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
            readings = store.read_scrape(client)
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
        for task, label in TASK_LABELS.items():
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
            "Periodic task runs by outcome (ok, error, skipped: another run held the lock).",
            labels=["task", "outcome"],
        )
        for task in store.SCRAPE_TASKS:
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
