"""Tables of the server-side hooks: webhook endpoints, their outbox and deliveries, and the
failures of signal receivers."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from presence.protocol import events


class WebhookEndpoint(models.Model):
    """A URL that receives signed batches of presence events."""

    # The endpoint configured by PRESENCE_WEBHOOK_URL is this row (kept in step each run).
    ENVIRONMENT = "environment"

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=200, help_text="HMAC-SHA256 key of the signature.")
    # Types this endpoint receives; empty: all of them.
    event_types = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    from_environment = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def wants(self, event_type: str) -> bool:
        """Whether events of ``event_type`` are sent to this endpoint."""
        return not self.event_types or event_type in self.event_types


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    DEAD = "dead", "Dead letter"


class WebhookEvent(models.Model):
    """One event queued for one endpoint: the outbox, and the dead letters when it failed
    for longer than PRESENCE_WEBHOOK_RETRY_FOR."""

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="events")
    event_id = models.CharField(max_length=64)
    type = models.CharField(max_length=32, choices=[(t, t) for t in events.EVENT_TYPES])
    # Not a foreign key: a user deleted meanwhile still has their offline delivered.
    user_id = models.BigIntegerField(db_index=True)
    room = models.CharField(max_length=200, blank=True)
    payload = models.JSONField()
    # The event-log id as numbers: the delivery order (ids do not sort as strings).
    log_ms = models.BigIntegerField()
    log_seq = models.BigIntegerField()
    state = models.CharField(
        max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["log_ms", "log_seq", "id"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event_id"], name="webhook_event_once")
        ]
        indexes = [models.Index(fields=["endpoint", "state", "log_ms", "log_seq"])]
        permissions = [("replay_webhookevent", "Can replay webhook dead letters")]

    def __str__(self) -> str:
        return f"{self.event_id} → {self.endpoint_id}"


class WebhookDelivery(models.Model):
    """One POST of a batch to an endpoint: its outcome, status, latency and attempt."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    events = models.IntegerField()
    first_event_id = models.CharField(max_length=64)
    last_event_id = models.CharField(max_length=64)
    # Attempt number of the batch's first event (1: first try).
    attempt = models.IntegerField()
    outcome = models.CharField(max_length=16)  # delivered, failed, timeout
    status_code = models.IntegerField(null=True, blank=True)
    latency_ms = models.IntegerField()
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.endpoint_id} {self.outcome} {self.started_at:%H:%M:%S}"


class HookFailure(models.Model):
    """A signal receiver that raised for an event: retried with back-off, given up after
    PRESENCE_HOOKS_RETRY_FOR."""

    event_id = models.CharField(max_length=64)
    type = models.CharField(max_length=32)
    user_id = models.BigIntegerField(db_index=True)
    receiver = models.CharField(max_length=255)
    error = models.TextField()
    attempts = models.IntegerField(default=1)
    first_failed_at = models.DateTimeField(default=timezone.now)
    last_failed_at = models.DateTimeField(default=timezone.now, db_index=True)
    gave_up = models.BooleanField(default=False)
    # Set when a later attempt of the same event went through every receiver.
    recovered = models.BooleanField(default=False)

    class Meta:
        ordering = ["-last_failed_at"]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "receiver"], name="hook_failure_once")
        ]

    def __str__(self) -> str:
        return f"{self.receiver} on {self.event_id}"
