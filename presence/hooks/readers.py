"""The hooks' long-running log readers (``manage.py presence_consume``, docs/hooks.md).

* :class:`SignalHandler` sends the Django signals of each batch as it arrives (the work of
  ``presence.hooks.dispatch``), keeping held users' entries pending and re-reading them
  when their retry is due.
* :class:`WebhookHandler` routes each batch into the outbox (``presence.hooks.webhooks``)
  and hands the endpoints with something due to :class:`Deliveries`, this process's
  delivery threads, at once: no batch window holds a lone event (see
  ``PRESENCE_WEBHOOK_BATCH_WINDOW``); what piles up while a POST is in flight is the next
  POST's batch.

Both run in :class:`presence.jobs.consumers.LogConsumer`, which reads, acknowledges, claims
what dead readers left and survives failures.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import redis
from django.db import close_old_connections, transaction
from django.utils import timezone

from presence import store
from presence.conf import app_settings
from presence.hooks import dispatch, replicas, webhooks
from presence.jobs.consumers import TRANSIENT, Handled
from presence.models import DeliveryState, WebhookEndpoint, WebhookEvent

logger = logging.getLogger(__name__)

# Seconds after which a reader's own pending entries (held users) are re-read at the latest.
RESCAN_MAX = 5.0
# Seconds between two refreshes of the enabled endpoints (an endpoint added in the admin
# starts receiving within this), and between two clean-ups of the outbox.
ENDPOINTS_EVERY = 1.0
PRUNE_EVERY = 60.0
# Threads POSTing per process: a slow endpoint holds one for at most one timeout.
DELIVERY_THREADS = 4


class SignalHandler:
    """The Django-signal sender as a log consumer (group ``hooks``)."""

    job = dispatch.TASK
    group = store.HOOKS_GROUP
    exclusive = True  # signals go in log order per user: one reader at a time

    def __init__(self) -> None:
        self.batch = app_settings.HOOKS_BATCH
        self.claim_idle = app_settings.SESSION_LOG_CLAIM_IDLE

    def handle(
        self, client: redis.Redis, entries: list[store.GroupEntry], *, scan: bool
    ) -> Handled:
        """Send the batch's signals; held users' entries stay pending until their retry."""
        report = dispatch.SignalReport()
        sender = dispatch.Sender(client, report, strict=not scan)
        ack = sender.handle(entries, store.now_ms())
        retry_in = None
        if sender.holds:
            soonest = min(h.due_ms for h in sender.holds.values())
            retry_in = min(RESCAN_MAX, max(0.1, (soonest - store.now_ms()) / 1000))
        if report.unreplicated:
            retry_in = min(retry_in or replicas.RETRY, replicas.RETRY)
        return Handled(
            ack=ack,
            retry_in=retry_in,
            work={"events_total": report.events, "failed_total": report.failed},
        )

    def idle(self, client: redis.Redis) -> None:
        """Nothing periodic: retries come from the reader's scans of its pending entries."""

    def stop(self) -> None:
        """Nothing runs beside the reader."""


class Deliveries:
    """This process's webhook delivery threads: :meth:`kick` an endpoint, it is delivered.

    One delivery per endpoint at a time in the whole deployment (the endpoint's lock, as the
    Celery task takes it), so the order holds; an endpoint kicked while its delivery runs
    here is delivered again right after, so nothing committed meanwhile waits.
    """

    def __init__(self, stopping: threading.Event, threads: int = DELIVERY_THREADS) -> None:
        self.stopping = stopping
        self.queue: queue.Queue[int] = queue.Queue()
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.again: set[int] = set()
        self.threads = [
            threading.Thread(target=self._work, name=f"webhook-delivery-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self.threads:
            t.start()

    def kick(self, endpoint_id: int) -> None:
        """Deliver ``endpoint_id``'s due events soon (at once when a thread is free)."""
        with self.lock:
            if endpoint_id in self.running:
                self.again.add(endpoint_id)
                return
            self.running.add(endpoint_id)
        self.queue.put(endpoint_id)

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                endpoint_id = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._deliver(endpoint_id)
            except Exception as exc:  # the reader's idle check kicks it again later
                close_old_connections()
                log = logger.warning if isinstance(exc, TRANSIENT) else logger.exception
                log("webhooks: delivery to endpoint %s failed: %r", endpoint_id, exc)
            finally:
                with self.lock:
                    self.running.discard(endpoint_id)
                    again = endpoint_id in self.again
                    self.again.discard(endpoint_id)
                if again and not self.stopping.is_set():
                    self.kick(endpoint_id)

    def _deliver(self, endpoint_id: int) -> None:
        while not self.stopping.is_set():
            with self.lock:
                self.again.discard(endpoint_id)
            report = webhooks.deliver(endpoint_id)
            if report.skipped or report.failed or not self._due(endpoint_id):
                return
            # Another process may have committed events while this one held the lock and
            # found none: it skipped (lock held); delivering again here sends them.

    @staticmethod
    def _due(endpoint_id: int) -> bool:
        head = (
            WebhookEvent.objects.filter(endpoint_id=endpoint_id, state=DeliveryState.PENDING)
            .order_by("log_ms", "log_seq", "id")
            .values_list("next_attempt_at", flat=True)
            .first()
        )
        return head is not None and head <= timezone.now()


class WebhookHandler:
    """The webhook router as a log consumer (group ``webhooks``), delivering at once."""

    job = webhooks.TASK
    group = store.WEBHOOKS_GROUP
    # One router at a time: an event routed late by a slower router could otherwise reach
    # the outbox after a later one of its endpoint was sent. Deliveries run in parallel.
    exclusive = True

    def __init__(self, stopping: threading.Event) -> None:
        self.batch = app_settings.HOOKS_BATCH
        self.claim_idle = app_settings.SESSION_LOG_CLAIM_IDLE
        self.deliveries = Deliveries(stopping)
        self.endpoints: list[WebhookEndpoint] = []
        self.endpoints_at = 0.0
        self.next_check = 0.0
        self.next_prune = time.monotonic() + PRUNE_EVERY

    def _endpoints(self) -> list[WebhookEndpoint]:
        now = time.monotonic()
        if now - self.endpoints_at >= ENDPOINTS_EVERY:
            webhooks.sync_environment_endpoint()
            self.endpoints = list(WebhookEndpoint.objects.filter(enabled=True))
            self.endpoints_at = now
        return self.endpoints

    def handle(
        self, client: redis.Redis, entries: list[store.GroupEntry], *, scan: bool
    ) -> Handled:
        """Route the batch into the outbox (one transaction), then deliver what is due."""
        report = webhooks.RouteReport()
        endpoints = self._endpoints()
        # Entries a replica does not hold yet wait (one close, one user.offline: replicas.py).
        ready, unconfirmed = replicas.split_replicated(entries)
        rows = webhooks.outbox_rows(ready, endpoints, report)
        if rows:
            with transaction.atomic():
                WebhookEvent.objects.bulk_create(rows, ignore_conflicts=True)
            touched = {row.endpoint_id for row in rows}
            if app_settings.WEBHOOK_BATCH_WINDOW <= 0:
                # WARNING: the latency path. No window: deliver at once; the delivery itself
                # leaves an endpoint in back-off alone (its head waits for its retry).
                for endpoint_id in sorted(touched):
                    self.deliveries.kick(endpoint_id)
            else:
                webhooks.start_due_deliveries(
                    client, [e for e in endpoints if e.pk in touched], self.deliveries.kick
                )
        return Handled(
            ack=[e.id for e in ready],
            retry_in=replicas.RETRY if unconfirmed else None,
            work={"queued_total": len(rows)},
        )

    def idle(self, client: redis.Redis) -> None:
        """Each ``PRESENCE_HOOKS_INTERVAL``: deliver retries that came due (and batches a
        window held); each minute: drop delivered events older than PRESENCE_WEBHOOK_KEEP."""
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + app_settings.HOOKS_INTERVAL
            webhooks.start_due_deliveries(client, self._endpoints(), self.deliveries.kick)
        if now >= self.next_prune:
            self.next_prune = now + PRUNE_EVERY
            webhooks.prune()

    def stop(self) -> None:
        """Delivery threads end after their POST in flight (they are daemons: a process
        exiting does not wait; the endpoint's lock expires and the events are sent again)."""
