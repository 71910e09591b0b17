"""Presence reads for HTTP: pure, cheap, no side effects.

The ``a*`` functions are the HTTP API's: asyncio Redis reads inside the request's one Redis
deadline (``within``, presence/api/deadline.py). The sync ones serve tasks and tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db.models import Case, Max, When
from django.db.models.functions import Coalesce

from presence import store
from presence.access.authz import acan_access_room
from presence.conf import app_settings
from presence.protocol.types import PresenceListing
from sessions_app.models import ConnectionSession, EndReason
from sessions_app.queries import last_seen_by_user

Within = Callable[[], asyncio.Timeout]


def get_online(room: str | None = None) -> PresenceListing:
    """Everyone online, or the members of ``room``."""
    count, users = store.list_online(room)
    return {"count": count, "users": users}


async def aget_online(room: str | None, *, within: Within) -> PresenceListing:
    """Everyone online, or the members of ``room``; both round trips inside ``within()``."""
    async with within():
        count, users = await store.alist_online(room)
    return {"count": count, "users": users}


async def aget_online_page(room: str | None, cursor: int, *, within: Within) -> dict[str, Any]:
    """One page of everyone online (or of ``room``): ``next`` continues, None = the end."""
    async with within():
        count, users, after = await store.alist_online_page(room, cursor, app_settings.LIST_LIMIT)
    return {"count": count, "users": users, "next": str(after) if after else None}


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


async def aget_user_rooms(viewer: Any, user_id: int, *, within: Within) -> list[str]:
    """The rooms ``user_id`` is in that ``viewer`` may list (PRESENCE_ROOM_AUTHORIZER, action
    ``list``): where-now. Two Redis round trips (inside ``within()``) whatever the number of
    rooms."""
    async with within():
        rooms = await store.auser_rooms(user_id)
    return [room for room in rooms if await acan_access_room(viewer, room, "list")]


def _status_rows(statuses: list[store.UserStatus], seen: dict[int, Any]) -> list[dict[str, Any]]:
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


async def aget_users_status(user_ids: Sequence[int], *, within: Within) -> list[dict[str, Any]]:
    """Presence of many users, in the order asked (each once); ids of no user are left out.

    One Redis round trip (inside ``within()``) whatever the number, and two SQL queries:
    which ids are users, and the offline ones' last moment seen.
    """
    wanted = list(dict.fromkeys(user_ids))
    known = {
        pk
        async for pk in get_user_model()
        ._default_manager.filter(pk__in=wanted)
        .values_list("pk", flat=True)
    }
    ids = [uid for uid in wanted if uid in known]
    async with within():
        statuses = await store.ausers_status(ids)
    seen = await sync_to_async(last_seen_by_user)([s.uid for s in statuses if not s.online])
    return _status_rows(statuses, seen)


def get_user_presence(user_id: int) -> dict[str, Any] | None:
    """One user's presence, or None if there is no such user."""
    user = get_user_model()._default_manager.filter(pk=user_id).first()
    if user is None:
        return None
    status, connections = store.user_presence(user_id)
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
        status, connections = await store.auser_presence(user_id)
    seen = await ConnectionSession.objects.filter(user_id=user_id).aaggregate(
        seen=Max(_last_seen_expression())
    )
    return _format(user, status, connections, seen["seen"])
