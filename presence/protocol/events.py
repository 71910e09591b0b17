"""The hook events' wire names and payload (docs/hooks.md): what signals and webhooks carry.

Deriving them from event-log entries is :mod:`presence.hooks.events`; the names live here,
below everything, because the hooks' tables, the system checks and the Django signals need
them without the store.
"""

from __future__ import annotations

from typing import TypedDict

USER_ONLINE = "user.online"
USER_OFFLINE = "user.offline"
USER_STATUS = "user.status"
ROOM_OCCUPIED = "room.occupied"
ROOM_VACATED = "room.vacated"
ROOM_JOIN = "room.join"
ROOM_LEAVE = "room.leave"
EVENT_TYPES = (
    USER_ONLINE,
    USER_OFFLINE,
    USER_STATUS,
    ROOM_OCCUPIED,
    ROOM_VACATED,
    ROOM_JOIN,
    ROOM_LEAVE,
)


class UserRef(TypedDict):
    id: int
    username: str


class EventPayload(TypedDict):
    """One event as a webhook body carries it (docs/hooks.md)."""

    id: str
    type: str
    at: str
    at_ms: int
    user: UserRef
    room: str | None
    status: str
    reason: str | None
    position: str
