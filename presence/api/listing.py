"""Presence reads for HTTP: pure, cheap, no side effects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Case, Max, When
from django.db.models.functions import Coalesce

from presence import store
from presence.access.authz import can_access_room
from presence.protocol.types import PresenceListing
from sessions_app.models import ConnectionSession, EndReason
from sessions_app.queries import last_seen_by_user


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


def get_user_rooms(viewer: Any, user_id: int) -> list[str]:
    """The rooms ``user_id`` is in that ``viewer`` may list (PRESENCE_ROOM_AUTHORIZER, action
    ``list``): where-now. Two Redis round trips whatever the number of rooms."""
    rooms = store.user_rooms(store.get_redis(), user_id)
    return [room for room in rooms if can_access_room(viewer, room, "list")]


def get_users_status(user_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Presence of many users, in the order asked (each once); ids of no user are left out.

    One Redis round trip whatever the number (store.users_status), and two SQL queries:
    which ids are users, and the offline ones' last moment seen.
    """
    wanted = list(dict.fromkeys(user_ids))
    known = set(
        get_user_model()._default_manager.filter(pk__in=wanted).values_list("pk", flat=True)
    )
    ids = [uid for uid in wanted if uid in known]
    statuses = store.users_status(store.get_redis(), ids)
    seen = last_seen_by_user(s.uid for s in statuses if not s.online)
    return [
        {
            "id": s.uid,
            "online": s.online,
            "status": s.status,
            "last_seen": None if s.online or s.uid not in seen else seen[s.uid].isoformat(),
            "last_active": s.last_active,
        }
        for s in statuses
    ]
