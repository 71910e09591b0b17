"""Presence metrics for Prometheus: in-process counters, and gauges read from Redis at scrape.

Two kinds of metric, for two reasons:

* **Events counted where they happen** (connects, frames, errors, handler durations, the
  hot path's Redis round trip) are prometheus_client counters and histograms, incremented
  in memory. With ``PROMETHEUS_MULTIPROC_DIR`` set (production, ``make run``) every process
  writes them to its own file there and ``/metrics`` sums all files, so they add up across
  uvicorn workers (prometheus_client's multiprocess mode). Without it they live in the
  default registry of the process (development, tests).
* **State** (who is online, the process registry, the periodic tasks' runs, ghosts) is read
  from Redis when ``/metrics`` is scraped, by ``presence.ops.collector`` (a surface: it reads
  the store; this module reads nothing and imports nothing of the project above it).

WARNING: the hook functions below run on the hot path (per frame, per connection). They are
in-memory increments on label children resolved once and cached; no Redis call, no SQL, no
lock beyond prometheus_client's own.

Names follow Prometheus conventions: ``presence_`` prefix, counters ``_total``, durations
``_seconds``; docs/operations.md lists every metric with its meaning.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any, Protocol

from prometheus_client import Counter, Histogram

from presence.obs import buckets
from presence.obs.logs import bind_connection
from presence.protocol.closecodes import REFUSALS

logger = logging.getLogger("presence.ws")


class Connection(Protocol):
    """What the connection hooks read of a WebSocket consumer (``presence.consumers``)."""

    session_id: str
    user_id: int
    protocol: int
    registered: bool
    scope: Mapping[str, Any]
    end_reason: Enum


class HandlerTypes(Protocol):
    """The message-handler registry as the metrics see it: which types have a series."""

    def __contains__(self, msg_type: object) -> bool: ...

    def types(self) -> Iterable[str]: ...


class _NoHandlers:
    def __contains__(self, msg_type: object) -> bool:
        return False

    def types(self) -> Iterable[str]:
        return ()


_handler_types: HandlerTypes = _NoHandlers()
# Called at each connection's start by the process registry (presence.live.processes).
_on_open: list[Callable[[str], None]] = []
_on_close: list[Callable[[str], None]] = []


def use_handler_types(types: HandlerTypes) -> None:
    """Label frames and handler series by the types ``types`` knows (the handler registry
    calls this when it is built: this module sits below the handlers and cannot import them).
    """
    global _handler_types
    _handler_types = types


def on_connection(*, opened: Callable[[str], None], closed: Callable[[str], None]) -> None:
    """Also call ``opened(session_id)`` / ``closed(session_id)`` as connections start and end
    (the per-process registry counts its sockets this way)."""
    _on_open.append(opened)
    _on_close.append(closed)


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
    buckets=buckets.LATENCY_BUCKETS,
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
    buckets=buckets.WEBHOOK_BUCKETS,
)
WEBHOOK_DEAD_LETTERS = Counter(
    "presence_webhook_dead_letters",
    "Webhook events that failed for PRESENCE_WEBHOOK_RETRY_FOR and became dead letters.",
    ["endpoint"],
)
REDIS_ROUNDTRIP = Histogram(
    "presence_redis_roundtrip_seconds",
    "Duration of the hot path's batched Redis call (heartbeat.lua for a batch of sockets).",
    buckets=buckets.ROUNDTRIP_BUCKETS,
)
STORE_UNAVAILABLE = Counter(
    "presence_store_unavailable",
    "Calls that found the presence store away (refused, timed out, READONLY, LOADING, "
    "MASTERDOWN, ...), by where: heartbeat (held and retried), handler, connect, eventlog.",
    ["where"],
)
HEARTBEATS_HELD = Counter(
    "presence_heartbeats_held",
    "Heartbeats held while the store was away, by outcome: acked (late, once it answered) "
    "or unavailable (past PRESENCE_HEARTBEAT_HOLD or PRESENCE_HEARTBEAT_HOLD_MAX).",
    ["outcome"],
)
HEARTBEAT_HOLD = Histogram(
    "presence_heartbeat_hold_seconds",
    "How long held heartbeats waited for the store before their answer.",
    buckets=buckets.HOLD_BUCKETS,
)
REASSERTED = Counter(
    "presence_connections_reasserted",
    "Live connections this process wrote back after the store lost them (a failover, "
    "a restart without data): the socket was open all along.",
)
EVENT_LOG_GAPS = Counter(
    "presence_event_log_gaps",
    "Times a process's event-log reader found entries missing (trimmed, or lost in a "
    "failover or restart) and resynchronised its v2 sockets.",
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

STORE_SITES = ("heartbeat", "handler", "connect", "eventlog")

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
    for where in STORE_SITES:
        STORE_UNAVAILABLE.labels(where)
    for outcome in ("acked", "unavailable"):
        HEARTBEATS_HELD.labels(outcome)


_handler_series: set[str] = set()


def ensure_handler_series() -> None:
    """Create each registered handler's series at 0 (once per type; cheap when done).

    Not at import: this module may be imported while the apps load, before the registry
    is filled. Called at each process's first connection and at every scrape.
    """
    for msg_type in _handler_types.types():
        if msg_type not in _handler_series:
            _handler_series.add(msg_type)
            FRAMES.labels(msg_type, "ok")
            HANDLER_DURATION.labels(msg_type)
            for kind in ("error", "timeout"):
                HANDLER_ERRORS.labels(msg_type, kind)


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
    return msg_type if msg_type in _handler_types else OTHER


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
def connection_opened(consumer: Connection) -> None:
    """A socket is registered in presence: count it, track it, bind the log context."""
    CONNECTS.inc()
    if not _handler_series:
        ensure_handler_series()
    sid = consumer.session_id
    _opened[sid] = time.monotonic()
    for opened in _on_open:
        opened(sid)
    bind_connection(sid, consumer.user_id)
    logger.info(
        "connect protocol=%d",
        consumer.protocol,
        extra={"session_id": sid, "user_id": consumer.user_id, "event": "connect"},
    )


def socket_closed(consumer: Connection, code: int) -> None:
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


def connection_ended(consumer: Connection, code: int) -> None:
    """A registered connection ended (its end reason is final): count, untrack, log."""
    reason = str(consumer.end_reason.value)
    child = _disconnects.get(reason)
    if child is None:
        child = _disconnects[reason] = DISCONNECTS.labels(reason)
    child.inc()
    sid = consumer.session_id
    for closed in _on_close:
        closed(sid)
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


def store_unavailable(where: str) -> None:
    """A call at ``where`` found the store away (counted; logged by obs.logs.store_outage)."""
    STORE_UNAVAILABLE.labels(where).inc()


def heartbeats_held(outcome: str, waits: Iterable[float]) -> None:
    """Held heartbeats were answered (``acked`` late, or ``unavailable``) after ``waits``."""
    n = 0
    for wait in waits:
        HEARTBEAT_HOLD.observe(wait)
        n += 1
    if n:
        HEARTBEATS_HELD.labels(outcome).inc(n)


def connections_reasserted(n: int) -> None:
    """``n`` live connections were written back to a store that had lost them."""
    REASSERTED.inc(n)


def event_log_gap() -> None:
    """An event-log reader found a gap and resynchronised."""
    EVENT_LOG_GAPS.inc()
