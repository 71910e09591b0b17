"""The ConnectionSession model."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class EndReason(models.TextChoices):
    CLOSED = "closed", "Closed by client"
    TIMEOUT = "timeout", "Presence expired"
    KICKED = "kicked", "Kicked by operator"
    SERVER_SHUTDOWN = "server_shutdown", "Server shutdown"
    ERROR = "error", "Error"
    LOGGED_OUT = "logged_out", "Logged out"
    # The user's credentials stopped being good: password changed, account deactivated or
    # deleted, or an operator blocked the user.
    REVOKED = "revoked", "Credentials revoked"


class ConnectionSessionQuerySet(models.QuerySet["ConnectionSession"]):
    def live(self) -> ConnectionSessionQuerySet:
        """Sessions not ended yet."""
        return self.filter(ended_at__isnull=True)


class ConnectionSession(models.Model):
    """One WebSocket connection; ``id`` is the ``session_id`` sent in ``hello``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="connection_sessions"
    )
    channel_name = models.CharField(max_length=255)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    connected_at = models.DateTimeField(db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True, db_index=True)
    end_reason = models.CharField(max_length=32, choices=EndReason.choices, blank=True)
    # Refreshed in bulk by the stats flush, never per heartbeat (hot path: zero SQL).
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)

    objects = ConnectionSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-connected_at"]
        indexes = [models.Index(fields=["user", "ended_at"])]
        # Rows are written by the presence engine only; operators view them and disconnect
        # live ones, which takes this permission (the admin's kick, the operator console).
        permissions = [("kick_connectionsession", "Can disconnect live sessions")]

    def __str__(self) -> str:
        return f"{self.user_id} @ {self.connected_at:%Y-%m-%d %H:%M:%S} ({self.id})"

    @property
    def is_live(self) -> bool:
        return self.ended_at is None

    @property
    def duration(self) -> float | None:
        """Seconds connected (until now for a live session)."""
        from django.utils import timezone

        end = self.ended_at or timezone.now()
        return (end - self.connected_at).total_seconds()
