"""Presence tables: per-minute stats buckets and the registry of message handlers.

Live presence never touches these tables; it lives in Redis (see presence/store/).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class StatsBucket(models.Model):
    """Counters of one minute, moved here from Redis by the stats flush (exactly once)."""

    minute = models.DateTimeField(unique=True)
    heartbeats = models.BigIntegerField(default=0)
    connects = models.BigIntegerField(default=0)
    disconnects = models.BigIntegerField(default=0)
    messages = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    peak_users = models.IntegerField(default=0)
    peak_connections = models.IntegerField(default=0)
    # Per-field detail: {"msg:room.join": 3, "err:bad_json": 1, "h:chat.typing:calls": 2, ...}
    counters = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-minute"]
        # The operator console's process pages (presence.console.inspect): no table of their
        # own holds processes (they live in Redis), so the permission hangs off the stats.
        permissions = [("inspect_process", "Can inspect live web processes")]

    def __str__(self) -> str:
        return f"stats {self.minute:%Y-%m-%d %H:%M}"


class FlushRecord(models.Model):
    """A flush id written in the same transaction as its counters: proof it was applied."""

    flush_id = models.CharField(max_length=64, unique=True)
    applied_at = models.DateTimeField(auto_now_add=True)
    fields = models.IntegerField(default=0)

    def __str__(self) -> str:
        return self.flush_id


class HandlerStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ACTIVE = "active", "Active"
    FAILED = "failed", "Failed"
    DISABLED = "disabled", "Disabled"


class RegisteredHandler(models.Model):
    """One WebSocket message type and the handler registered for it."""

    type = models.CharField(max_length=100, unique=True)
    path = models.CharField(max_length=255)
    description = models.CharField(max_length=255, blank=True)
    core = models.BooleanField(default=False)
    version = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=HandlerStatus.choices, default=HandlerStatus.PENDING
    )
    error = models.TextField(blank=True)
    registered_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_registered_by = models.CharField(max_length=255, blank=True)
    calls = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    timeouts = models.BigIntegerField(default=0)
    # Latency histogram: {"<upper bound s>": count, ..., "inf": count}
    latency = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["type"]

    def __str__(self) -> str:
        return f"{self.type} v{self.version}"


class UserBlockQuerySet(models.QuerySet["UserBlock"]):
    def active(self) -> UserBlockQuerySet:
        """Blocks still in force."""
        return self.filter(until__gt=timezone.now())


class UserBlock(models.Model):
    """An operator's block: the user may not open presence connections until ``until``.

    The database row is the record; Redis holds the block the connect path checks
    (``{P}:user:<uid>:block``, expiring with it), written by presence.actions.revocation.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presence_blocks"
    )
    until = models.DateTimeField(db_index=True)
    reason = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = UserBlockQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"block of {self.user} until {self.until:%Y-%m-%d %H:%M:%S}"

    @property
    def is_active(self) -> bool:
        return self.until > timezone.now()
