"""Who may join or list a room: the ``PRESENCE_ROOM_AUTHORIZER`` hook.

The setting names a callable ``(user, room, action) -> bool``, ``action`` being ``"join"``
(``room.join``) or ``"list"`` (``presence.list`` / ``presence.sync`` of a room, and
``GET /api/presence/online/?room=``). Unset, everything is allowed. A plain function may use
the ORM (it runs in Django's thread-sensitive executor from the WebSocket side); an ``async
def`` is awaited directly. Refusals are ``forbidden`` error frames / HTTP 403.

Example (docs/operations.md): only members of the Django group "staff" may use ``staff:*``::

    def staff_rooms(user, room, action):
        return not room.startswith("staff:") or user.groups.filter(name="staff").exists()
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

from channels.db import database_sync_to_async
from django.utils.module_loading import import_string

from presence.conf import app_settings
from presence.protocol.errors import FrameError

Action = Literal["join", "list"]
Authorizer = Callable[[Any, str, Action], Any]


@cache
def _load(path: str) -> Authorizer:
    return import_string(path)


def get_authorizer() -> Authorizer | None:
    """The configured authorizer, None when rooms are open to every user."""
    path = app_settings.ROOM_AUTHORIZER
    return _load(path) if path else None


def can_access_room(user: Any, room: str, action: Action) -> bool:
    """Sync check, for views."""
    check = get_authorizer()
    if check is None:
        return True
    if inspect.iscoroutinefunction(check):
        from asgiref.sync import async_to_sync

        return bool(async_to_sync(check)(user, room, action))
    return bool(check(user, room, action))


async def acan_access_room(user: Any, room: str, action: Action) -> bool:
    """Async check, for WebSocket handlers: no thread hop when no authorizer is set."""
    check = get_authorizer()
    if check is None:
        return True
    if inspect.iscoroutinefunction(check):
        return bool(await check(user, room, action))
    return bool(await database_sync_to_async(check)(user, room, action))


def get_watch_authorizer() -> Callable[[Any, int, str], Any] | None:
    """The configured watch authorizer, None when any user may watch any user."""
    path = app_settings.WATCH_AUTHORIZER
    return _load(path) if path else None  # type: ignore[return-value]


async def arefused_watches(user: Any, uids: list[int]) -> list[int]:
    """The ids of ``uids`` that ``user`` may not watch (PRESENCE_WATCH_AUTHORIZER).

    Same contract as the room authorizer, called ``(user, watched_user_id, "watch")``; a
    plain function runs in Django's thread-sensitive executor, all ids in one hop.
    """
    check = get_watch_authorizer()
    if check is None:
        return []
    if inspect.iscoroutinefunction(check):
        return [uid for uid in uids if not await check(user, uid, "watch")]

    def refused() -> list[int]:
        return [uid for uid in uids if not check(user, uid, "watch")]

    return await database_sync_to_async(refused)()


async def require_room_access(user: Any, room: str, action: Action) -> None:
    """Raise ``forbidden`` unless ``user`` may ``action`` ``room``."""
    if not await acan_access_room(user, room, action):
        raise FrameError("forbidden", f"you may not {action} room {room!r}")
