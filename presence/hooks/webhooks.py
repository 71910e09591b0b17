"""Signed webhooks: the event log routed into a per-endpoint outbox, delivered in batches.

Routing and delivery run in ``manage.py presence_consume`` (presence/hooks/readers.py), off
the WebSocket path (docs/hooks.md); this module holds their work:

* routing (:func:`outbox_rows`) writes one ``WebhookEvent`` row per (endpoint, event) the
  endpoint wants (idempotent: unique per endpoint and event id); the reader acknowledges the
  entries only after that commit and has the endpoints delivered at once.
* :func:`deliver` holds the endpoint's own lock (one delivery per endpoint at a time: the
  order holds) and POSTs the oldest pending events, in log order, signed. A 2xx marks them
  delivered. Anything else (status, timeout, refused connection) counts an attempt on each
  and sets their next attempt after an exponential back-off with jitter; the queue's head
  waits, so nothing overtakes it. An event failing for longer than
  ``PRESENCE_WEBHOOK_RETRY_FOR`` becomes a dead letter (state ``dead``, replayable from the
  admin) and the queue moves on.

A process killed mid-POST leaves the events pending and the lock expiring (its lifetime is a
run's budget plus one timeout): the next delivery sends them again. The Celery tasks
``presence.route_webhooks`` (one bounded routing run, by hand) and
``presence.deliver_webhooks`` (the admin's replay) do the same work.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import math
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import current_app
from django.db import DatabaseError, transaction
from django.db.models import Count, Min, QuerySet
from django.utils import timezone

from presence import store
from presence.conf import app_settings
from presence.hooks import destinations, replicas
from presence.hooks.events import HookEvent, backoff_seconds, events_of
from presence.jobs import groups
from presence.jobs.periodic import RunReport, run_locked
from presence.models import DeliveryState, WebhookDelivery, WebhookEndpoint, WebhookEvent
from presence.obs import metrics
from presence.protocol.events import EventPayload

logger = logging.getLogger(__name__)

TASK = "webhooks"
DELIVER_TASK = "presence.deliver_webhooks"
SIGNATURE_HEADER = "X-Presence-Signature"
USER_AGENT = "presence-webhooks/1"
# WARNING: bounds the routing run's clean-up: delivered events and delivery records older
# than PRESENCE_WEBHOOK_KEEP are deleted this many at a time.
PRUNE_BATCH = 1000
# Seconds a delivery run's lock (and hard time limit) adds to its budget and one timeout.
LOCK_SLACK = 2.0


# --------------------------------------------------------------------------- signing
def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Presence-Signature`` value: ``t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, tolerance: float = 300.0) -> bool:
    """Check a signature header as a receiver would (docs/hooks.md has the same code)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --------------------------------------------------------------------------- endpoints
def sync_environment_endpoint() -> None:
    """Keep the ``environment`` row in step with PRESENCE_WEBHOOK_URL/SECRET/EVENTS (an
    unset URL disables it; its queued events stay for the admin)."""
    url = app_settings.WEBHOOK_URL
    row = WebhookEndpoint.objects.filter(name=WebhookEndpoint.ENVIRONMENT).first()
    if not url:
        if row is not None and row.enabled and row.from_environment:
            row.enabled = False
            row.save(update_fields=["enabled", "updated_at"])
        return
    wanted = {
        "url": url,
        "secret": app_settings.WEBHOOK_SECRET,
        "event_types": app_settings.WEBHOOK_EVENTS,
        "enabled": True,
        "from_environment": True,
    }
    if row is None:
        WebhookEndpoint.objects.create(name=WebhookEndpoint.ENVIRONMENT, **wanted)
    elif any(getattr(row, k) != v for k, v in wanted.items()):
        for k, v in wanted.items():
            setattr(row, k, v)
        row.save()


# --------------------------------------------------------------------------- routing
@dataclass
class RouteReport(RunReport):
    """What one routing run did."""

    batches: int = 0
    entries: int = 0
    queued: int = 0  # (endpoint, event) rows offered to the outbox
    started: int = 0  # delivery tasks started
    pruned: int = 0
    malformed: int = 0
    trimmed: int = 0
    unreplicated: int = 0  # entries left pending until a replica has them (hooks/replicas.py)
    capped: bool = False

    def totals(self) -> dict[str, int]:
        return {**super().totals(), "queued_total": self.queued}


def outbox_rows(
    entries: list[store.GroupEntry], endpoints: list[WebhookEndpoint], report: RouteReport
) -> list[WebhookEvent]:
    """The outbox rows of a batch: each event for each endpoint that wants its type."""
    rows = []
    for entry in entries:
        if not entry.fields:
            report.trimmed += 1
            continue
        try:
            evs = events_of(entry)
        except (KeyError, ValueError) as exc:
            logger.warning("webhooks: malformed entry %s skipped: %r", entry.id, exc)
            report.malformed += 1
            continue
        ms, seq = store.stream_id_order(entry.id)
        for ev in evs:
            for endpoint in endpoints:
                if endpoint.wants(ev.type):
                    rows.append(_row(endpoint, ev, ms, seq))
    return rows


def _row(endpoint: WebhookEndpoint, ev: HookEvent, ms: int, seq: int) -> WebhookEvent:
    return WebhookEvent(
        endpoint=endpoint,
        event_id=ev.id,
        type=ev.type,
        user_id=ev.user_id,
        room=ev.room or "",
        payload=ev.payload(),
        log_ms=ms,
        log_seq=seq,
    )


def route(report: RouteReport) -> RouteReport:
    """Route what the log holds into the outbox, then start the deliveries that are due."""
    client = store.get_redis()
    sync_environment_endpoint()
    endpoints = list(WebhookEndpoint.objects.filter(enabled=True))
    reading = groups.Reading()
    for entries in groups.batches(
        store.WEBHOOKS_GROUP, count=app_settings.HOOKS_BATCH, reading=reading
    ):
        # Entries a replica does not hold yet stay pending for the next run (one close, one
        # user.offline: presence/hooks/replicas.py).
        ready, unconfirmed = replicas.split_replicated(entries)
        report.unreplicated += len(unconfirmed)
        rows = outbox_rows(ready, endpoints, report)
        with transaction.atomic():
            WebhookEvent.objects.bulk_create(rows, ignore_conflicts=True)
        # Only after the commit: a failure above leaves the entries pending for the next run.
        store.ack_group(store.WEBHOOKS_GROUP, [e.id for e in ready])
        report.entries += len(entries)
        report.queued += len(rows)
    report.batches, report.capped = reading.batches, reading.capped
    report.started = start_due_deliveries(client, endpoints)
    report.pruned = prune()
    return report


def route_webhooks() -> RouteReport:
    """One routing run under its lock (a held lock: a counted skip)."""
    report = run_locked(TASK, groups.TIME_LIMIT * 1000, RouteReport(), route)
    if report.malformed or report.trimmed:
        logger.info("webhooks: %s", report)
    return report


def _pending(endpoint_id: int) -> QuerySet[WebhookEvent]:
    return WebhookEvent.objects.filter(endpoint_id=endpoint_id, state=DeliveryState.PENDING)


def start_due_deliveries(
    client: Any,
    endpoints: list[WebhookEndpoint],
    start: Callable[[int], None] | None = None,
) -> int:
    """Start a delivery (``start``; by default the task ``presence.deliver_webhooks``) for
    every endpoint with a batch due; record the backlog per endpoint for the metrics.

    Due: a retry is due, ``PRESENCE_WEBHOOK_BATCH_SIZE`` events wait, or the oldest waited
    ``PRESENCE_WEBHOOK_BATCH_WINDOW`` (0 by default: at once; what piles up while a POST is
    in flight makes the next batch)."""
    start = start or start_delivery
    now = timezone.now()
    window = dt.timedelta(seconds=app_settings.WEBHOOK_BATCH_WINDOW)
    backlog = {
        row["endpoint__name"]: row["n"]
        for row in WebhookEvent.objects.filter(state=DeliveryState.PENDING)
        .values("endpoint__name")
        .annotate(n=Count("id"))
    }
    store.write_webhook_backlog(client, backlog)
    started = 0
    for endpoint in endpoints:
        waiting = backlog.get(endpoint.name, 0)
        if not waiting:
            continue
        head = _pending(endpoint.pk).order_by("log_ms", "log_seq", "id").first()
        if head is None or head.next_attempt_at > now:
            continue  # in back-off: the head waits, nothing overtakes it
        oldest = _pending(endpoint.pk).aggregate(t=Min("created_at"))["t"] or now
        due = (
            waiting >= app_settings.WEBHOOK_BATCH_SIZE
            or oldest <= now - window
            or head.attempts > 0
        )
        if due and not store.task_lock_held(client, lock_name(endpoint.pk)):
            start(endpoint.pk)
            started += 1
    return started


def lock_name(endpoint_id: int) -> str:
    """The task-lock name of one endpoint's deliveries."""
    return f"webhook-{endpoint_id}"


def delivery_time_limit() -> float:
    """A delivery run's hard time limit, and its lock's lifetime: it stops starting POSTs
    after its budget, and a POST lasts at most about one timeout."""
    return app_settings.WEBHOOK_RUN_BUDGET + app_settings.WEBHOOK_TIMEOUT + LOCK_SLACK


def start_delivery(endpoint_id: int) -> None:
    """Queue one delivery run of an endpoint (by task name: no import cycle with tasks)."""
    limit = math.ceil(delivery_time_limit())
    current_app.send_task(
        DELIVER_TASK,
        args=[endpoint_id],
        time_limit=limit,
        soft_time_limit=max(1, limit - 1),
        # A run that waited in the queue longer than a batch window is superseded.
        expires=max(5.0, 5 * app_settings.HOOKS_INTERVAL),
    )


def prune() -> int:
    """Delete delivered events and delivery records older than PRESENCE_WEBHOOK_KEEP."""
    cutoff = timezone.now() - dt.timedelta(seconds=app_settings.WEBHOOK_KEEP)
    ids = list(
        WebhookEvent.objects.filter(
            state=DeliveryState.DELIVERED, delivered_at__lt=cutoff
        ).values_list("id", flat=True)[:PRUNE_BATCH]
    )
    old = list(
        WebhookDelivery.objects.filter(started_at__lt=cutoff).values_list("id", flat=True)[
            :PRUNE_BATCH
        ]
    )
    n = WebhookEvent.objects.filter(id__in=ids).delete()[0] if ids else 0
    return n + (WebhookDelivery.objects.filter(id__in=old).delete()[0] if old else 0)


# --------------------------------------------------------------------------- delivery
@dataclass
class PostResult:
    """What one POST gave."""

    outcome: str  # delivered, failed, timeout
    status: int | None
    seconds: float
    error: str = ""


def post(endpoint: WebhookEndpoint, payloads: list[EventPayload]) -> PostResult:
    """POST one batch, signed; never raises."""
    body = json.dumps(
        {"endpoint": endpoint.name, "events": payloads}, separators=(",", ":")
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked below
        endpoint.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(endpoint.secret, body, int(time.time())),
        },
    )
    started = time.monotonic()
    if not endpoint.url.startswith(("http://", "https://")):
        # file:, ftp: and the like are never fetched (a misconfigured environment URL).
        return PostResult("failed", None, 0.0, "not an http(s) URL")
    try:
        # Checked and connected to the checked address (no redirects, no proxy).
        with destinations.open_checked(request, timeout=app_settings.WEBHOOK_TIMEOUT) as response:
            response.read(65536)  # the receiver's answer is not used; bounded
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return PostResult("failed", exc.code, time.monotonic() - started, f"HTTP {exc.code}")
    except TimeoutError as exc:
        return PostResult("timeout", None, time.monotonic() - started, f"timeout: {exc}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        outcome = "timeout" if isinstance(reason, TimeoutError) else "failed"
        return PostResult(outcome, None, time.monotonic() - started, f"{reason}"[:500])
    seconds = time.monotonic() - started
    if 200 <= status < 300:
        return PostResult("delivered", status, seconds)
    return PostResult("failed", status, seconds, f"HTTP {status}")


@dataclass
class DeliveryReport:
    """What one delivery run of an endpoint did."""

    skipped: bool = False
    posts: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        """For the task's return value."""
        return {k: int(v) for k, v in self.__dict__.items()}


def deliver(endpoint_id: int) -> DeliveryReport:
    """Deliver an endpoint's due events, oldest first, batch by batch, under its lock."""
    report = DeliveryReport()
    client = store.get_redis()
    token = store.acquire_task_lock(
        client, lock_name(endpoint_id), int(delivery_time_limit() * 1000)
    )
    if token is None:
        report.skipped = True
        return report
    try:
        started = time.monotonic()
        while time.monotonic() - started < app_settings.WEBHOOK_RUN_BUDGET:
            endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id, enabled=True).first()
            if endpoint is None:
                break
            batch = list(
                _pending(endpoint_id).order_by("log_ms", "log_seq", "id")[
                    : app_settings.WEBHOOK_BATCH_SIZE
                ]
            )
            if not batch or batch[0].next_attempt_at > timezone.now():
                break
            if not deliver_batch(endpoint, batch, report):
                break
    finally:
        store.release_task_lock(client, lock_name(endpoint_id), token)
    return report


def deliver_batch(
    endpoint: WebhookEndpoint, batch: list[WebhookEvent], report: DeliveryReport
) -> bool:
    """POST one batch and record what happened; True when the queue may go on."""
    attempt = batch[0].attempts + 1
    result = post(endpoint, [e.payload for e in batch])
    now = timezone.now()
    report.posts += 1
    metrics.webhook_delivery(endpoint.name, result.outcome, result.seconds)
    ids = [e.pk for e in batch]
    with transaction.atomic():
        WebhookDelivery.objects.create(
            endpoint=endpoint,
            started_at=now - dt.timedelta(seconds=result.seconds),
            events=len(batch),
            first_event_id=batch[0].event_id,
            last_event_id=batch[-1].event_id,
            attempt=attempt,
            outcome=result.outcome,
            status_code=result.status,
            latency_ms=int(result.seconds * 1000),
            error=result.error,
        )
        if result.outcome == "delivered":
            for e in batch:
                e.attempts += 1
                e.first_attempt_at = e.first_attempt_at or now
                e.state, e.delivered_at, e.last_error = DeliveryState.DELIVERED, now, ""
            WebhookEvent.objects.bulk_update(
                batch, ["attempts", "first_attempt_at", "state", "delivered_at", "last_error"]
            )
            report.delivered += len(batch)
            return True
        dead = _fail(batch, now, result.error)
    report.failed += len(batch)
    report.dead += dead
    if dead:
        metrics.webhook_dead_letters(endpoint.name, dead)
        logger.warning("webhooks: %d events to %s are dead letters", dead, endpoint.name)
    logger.info(
        "webhooks: %s failed (%s), %d events retried later", endpoint.name, result.error, len(ids)
    )
    # Go on only when the whole batch is dead (the queue's head moved); otherwise it waits.
    return dead == len(batch)


def _fail(batch: list[WebhookEvent], now: dt.datetime, error: str) -> int:
    retry_for = dt.timedelta(seconds=app_settings.WEBHOOK_RETRY_FOR)
    dead = 0
    for e in batch:
        e.attempts += 1
        e.first_attempt_at = e.first_attempt_at or now
        e.last_error = error
        if now - e.first_attempt_at >= retry_for:
            e.state = DeliveryState.DEAD
            dead += 1
        else:
            delay = backoff_seconds(
                e.attempts,
                base=app_settings.HOOKS_BACKOFF_BASE,
                cap=app_settings.HOOKS_BACKOFF_MAX,
                rand=random.random(),  # noqa: S311 - jitter, not a secret
            )
            e.next_attempt_at = now + dt.timedelta(seconds=delay)
    WebhookEvent.objects.bulk_update(
        batch, ["attempts", "first_attempt_at", "last_error", "state", "next_attempt_at"]
    )
    return dead


# --------------------------------------------------------------------------- replay
def do_replay_dead_letters(events: QuerySet[WebhookEvent]) -> int:
    """Queue dead letters again as new (attempts from zero) and start their endpoints'
    deliveries; returns how many were queued. They go out before newer pending events of
    their endpoint (the outbox is ordered by log position)."""
    with transaction.atomic():
        dead = events.filter(state=DeliveryState.DEAD)
        endpoint_ids = set(dead.values_list("endpoint_id", flat=True))
        n = dead.update(
            state=DeliveryState.PENDING,
            attempts=0,
            first_attempt_at=None,
            next_attempt_at=timezone.now(),
        )
    for endpoint_id in endpoint_ids:
        transaction.on_commit(functools.partial(start_delivery, endpoint_id))
    return n


def safe_route() -> RouteReport:
    """``route_webhooks`` that reports a database failure instead of raising (the entries
    stay pending and the next run tries again)."""
    try:
        return route_webhooks()
    except DatabaseError as exc:
        logger.warning("webhooks: database unavailable, entries stay pending: %s", exc)
        return RouteReport(error=f"database: {exc}"[:200])
