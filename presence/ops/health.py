"""Health checks: liveness (no dependencies) and readiness (database, Redis, channel layer,
broker, tasks).

``/healthz`` answers as long as the process serves requests. ``/readyz`` checks, concurrently
and each within ``CHECK_TIMEOUT``: a ``SELECT 1`` on the database, a ``PING`` to REDIS_URL and
to every other node of the presence store (each shard URL or Cluster primary, one check ``store
<node>`` each), a message sent and received through the channel layer, a connection to the
Celery broker, and the age of the last successful sweep and flush. It is not ready (503, the
failing dependencies listed in ``degraded``) when a dependency fails (for instance during a
Redis failover or a broker restart; ready again once it answers) or the last sweep is older
than ``PRESENCE_READY_SWEEP_MAX_AGE`` (0 turns that check off): without sweeps, vanished
clients would stay online forever. The flush's age is reported, never fatal; so are the
event-log consumers' (``stale`` after ``catalog.CONSUMER_LATE`` without a read): a web process
serves sockets without them, and the PresenceConsumerStalled alert watches them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict, cast

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from presence import store
from presence.conf import app_settings
from presence.jobs import catalog, periodic

# Seconds each check may take before it counts as failed. A probe hanging on a paused or
# failing-over dependency must not make the probe itself time out (orchestrators give ~1-5 s).
CHECK_TIMEOUT = 1.0
# The jobs whose last success /readyz reports (one Redis pipeline); only the sweep's and the
# flush's can make it unready (the flush's never does: no threshold).
READ_TASKS = ("sweep", "flush", *(job.key for job in catalog.consumers()))
FATAL_TASKS = ("sweep", "flush")


class CheckResult(TypedDict):
    """One dependency check."""

    ok: bool
    latency_ms: float
    error: str


class TaskAge(TypedDict):
    """How long ago a periodic task last succeeded."""

    last_success_age_seconds: float | None  # None: never succeeded (per Redis)
    max_age_seconds: float | None  # None: no threshold (reported only)
    stale: bool


class Readiness(TypedDict):
    """The body of ``/readyz``."""

    ready: bool
    checks: dict[str, CheckResult]
    tasks: dict[str, TaskAge]
    degraded: list[str]  # the failing checks and stale tasks, by name


def _db_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def check_database() -> None:
    """One ``SELECT 1`` on the default database."""
    await database_sync_to_async(_db_ping)()


async def check_redis() -> None:
    """``PING`` the presence Redis."""
    # redis-py 7 types ping() for the sync and asyncio clients at once.
    await cast(Awaitable[bool], store.get_async_redis().ping())


async def check_store_nodes() -> dict[str, CheckResult]:
    """``PING`` every node of the presence store beyond REDIS_URL (each shard URL, or each
    Cluster primary), concurrently, each within ``CHECK_TIMEOUT``: one check per node,
    ``store <node>`` (the password hidden), so a failing one is named. One Redis: none."""
    started = time.perf_counter()
    try:
        # Bounded twice over: a Cluster first maps its nodes (one timeout), then pings them.
        nodes = await asyncio.wait_for(
            store.aping_store_nodes(CHECK_TIMEOUT), 2 * CHECK_TIMEOUT + 0.5
        )
    except Exception as exc:
        nodes = {"(nodes)": f"{type(exc).__name__}: {exc}"[:200] or "timed out"}
    latency = round((time.perf_counter() - started) * 1000, 2)
    return {
        f"store {node}": {"ok": not error, "latency_ms": latency, "error": error}
        for node, error in nodes.items()
    }


async def check_channel_layer() -> None:
    """Send a message to a fresh channel and receive it back (a real round trip)."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    # A plain channel name (no "!"): not routed through this process's inbox reader.
    name = f"presence.readyz.{uuid.uuid4().hex}"
    await layer.send(name, {"type": "readyz.ping"})
    message = await layer.receive(name)
    if message.get("type") != "readyz.ping":
        raise RuntimeError(f"channel layer returned {message!r}")


def _broker_ping() -> None:
    from celery import current_app

    # The connection web processes send tasks on; a fresh one, so that a dead broker is
    # found out (pooled connections are only checked when used). Redis: connecting PINGs
    # (through the sentinels for the Sentinel form); AMQP: the handshake.
    options = {"socket_timeout": CHECK_TIMEOUT, "socket_connect_timeout": CHECK_TIMEOUT}
    connection = current_app.connection_for_write(
        connect_timeout=CHECK_TIMEOUT, transport_options=options
    )
    try:
        connection.connect()
    finally:
        connection.release()


async def check_broker() -> None:
    """Connect to the Celery broker (Redis, Redis behind Sentinel or RabbitMQ)."""
    await asyncio.to_thread(_broker_ping)


async def _timed(check: Callable[[], Awaitable[None]]) -> CheckResult:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        error = f"timed out after {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
    else:
        error = ""
    latency = round((time.perf_counter() - started) * 1000, 2)
    return {"ok": not error, "latency_ms": latency, "error": error}


def task_ages(runs: dict[str, periodic.TaskRun], now: float) -> dict[str, TaskAge]:
    """Sweep, flush and consumer ages; a sweep older than its threshold or a consumer
    without a read for ``CONSUMER_LATE`` is ``stale`` (only the sweep's makes it unready)."""
    thresholds: dict[str, float | None] = {
        "sweep": app_settings.READY_SWEEP_MAX_AGE or None,
        "flush": None,
        **{job.key: job.late_after() for job in catalog.consumers()},
    }
    out: dict[str, TaskAge] = {}
    for task, limit in thresholds.items():
        last = runs[task]["last_success_at"] if task in runs else None
        age = round(max(0.0, now - last), 3) if last is not None else None
        stale = limit is not None and (age is None or age > limit)
        out[task] = {"last_success_age_seconds": age, "max_age_seconds": limit, "stale": stale}
    return out


async def readiness() -> Readiness:
    """Run every check concurrently; ``ready`` only when all pass and the sweep is fresh."""
    names = ("database", "redis", "channel_layer", "broker")
    *results, nodes = await asyncio.gather(
        _timed(check_database),
        _timed(check_redis),
        _timed(check_channel_layer),
        _timed(check_broker),
        check_store_nodes(),
    )
    checks = {**dict(zip(names, results, strict=True)), **nodes}
    runs: dict[str, periodic.TaskRun] = {}
    if checks["redis"]["ok"]:
        try:
            runs = await asyncio.wait_for(
                asyncio.to_thread(periodic.last_runs, READ_TASKS), CHECK_TIMEOUT
            )
        except Exception as exc:
            checks["redis"] = {"ok": False, "latency_ms": 0.0, "error": f"task runs: {exc}"}
    ages = task_ages(runs, time.time())
    degraded = [name for name, c in checks.items() if not c["ok"]]
    degraded += [name for name in FATAL_TASKS if ages[name]["stale"]]
    return {"ready": not degraded, "checks": checks, "tasks": ages, "degraded": degraded}


def liveness() -> dict[str, Any]:
    """The body of ``/healthz``: this process answers; nothing else is asked."""
    from presence.live import processes

    local = processes.local()
    return {
        "status": "ok",
        "process": local.id,
        "uptime_seconds": round(time.time() - local.started_at, 3),
    }
