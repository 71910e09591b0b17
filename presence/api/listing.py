"""Presence reads for HTTP: pure, cheap, no side effects."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Case, Max, When
from django.db.models.functions import Coalesce

from presence import store
from presence.protocol.types import PresenceListing
from sessions_app.models import ConnectionSession, EndReason


def get_online(room: str | None = None) -> PresenceListing:
    """Everyone online, or the members of ``room``."""
    count, users = store.list_online(store.get_redis(), room)
    return {"count": count, "users": users}


def get_user_presence(user_id: int) -> dict[str, Any] | None:
    """One user's presence, or None if there is no such user."""
    user = get_user_model()._default_manager.filter(pk=user_id).first()
    if user is None:
        return None
    status, connections = store.user_presence(store.get_redis(), user_id)
    # The latest moment of any session: a session that started later may have ended earlier.
    # A timed-out session "ended" a TTL after the user was last heard from: use the heartbeat.
    seen = Case(
        When(end_reason=EndReason.TIMEOUT, then=Coalesce("last_heartbeat_at", "ended_at")),
        default=Coalesce("ended_at", "last_heartbeat_at", "connected_at"),
    )
    last_seen = ConnectionSession.objects.filter(user_id=user_id).aggregate(seen=Max(seen))["seen"]
    online = status is not None
    return {
        "id": user.pk,
        "username": user.get_username(),
        "online": online,
        "status": status if online else "offline",
        "connections": connections,
        "last_seen": None if online or last_seen is None else last_seen.isoformat(),
    }
