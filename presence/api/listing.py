"""Presence reads for HTTP: pure, cheap, no side effects.

The ``a*`` functions are the HTTP API's: asyncio Redis reads inside the request's one Redis
deadline (``within``, presence/api/deadline.py). The sync ones serve tasks and tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Case, Max, When
from django.db.models.functions import Coalesce

from presence import store
from presence.protocol.types import PresenceListing
from sessions_app.models import ConnectionSession, EndReason

Within = Callable[[], asyncio.Timeout]


def get_online(room: str | None = None) -> PresenceListing:
    """Everyone online, or the members of ``room``."""
    count, users = store.list_online(store.get_redis(), room)
    return {"count": count, "users": users}


async def aget_online(room: str | None, *, within: Within) -> PresenceListing:
    """Everyone online, or the members of ``room``; both round trips inside ``within()``."""
    async with within():
        count, users = await store.alist_online(store.get_async_redis(), room)
    return {"count": count, "users": users}


def _last_seen_expression() -> Any:
    # The latest moment of any session: a session that started later may have ended earlier.
    # A timed-out session "ended" a TTL after the user was last heard from: use the heartbeat.
    return Case(
        When(end_reason=EndReason.TIMEOUT, then=Coalesce("last_heartbeat_at", "ended_at")),
        default=Coalesce("ended_at", "last_heartbeat_at", "connected_at"),
    )


def _format(user: Any, status: str | None, connections: int, last_seen: Any) -> dict[str, Any]:
    online = status is not None
    return {
        "id": user.pk,
        "username": user.get_username(),
        "online": online,
        "status": status if online else "offline",
        "connections": connections,
        "last_seen": None if online or last_seen is None else last_seen.isoformat(),
    }


def get_user_presence(user_id: int) -> dict[str, Any] | None:
    """One user's presence, or None if there is no such user."""
    user = get_user_model()._default_manager.filter(pk=user_id).first()
    if user is None:
        return None
    status, connections = store.user_presence(store.get_redis(), user_id)
    last_seen = ConnectionSession.objects.filter(user_id=user_id).aggregate(
        seen=Max(_last_seen_expression())
    )["seen"]
    return _format(user, status, connections, last_seen)


async def aget_user_presence(user_id: int, *, within: Within) -> dict[str, Any] | None:
    """One user's presence, or None if there is no such user; the Redis read inside
    ``within()``."""
    user = await get_user_model()._default_manager.filter(pk=user_id).afirst()
    if user is None:
        return None
    async with within():
        status, connections = await store.auser_presence(store.get_async_redis(), user_id)
    seen = await ConnectionSession.objects.filter(user_id=user_id).aaggregate(
        seen=Max(_last_seen_expression())
    )
    return _format(user, status, connections, seen["seen"])
