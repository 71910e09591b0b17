"""TypedDicts of the wire format (protocol v1, see docs/protocol.md)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Status = Literal["online", "away", "busy"]
STATUSES: tuple[str, ...] = ("online", "away", "busy")


class UserRef(TypedDict):
    id: int
    username: str


class PresenceUser(TypedDict):
    id: int
    username: str
    status: str
    connections: int


class PresenceListing(TypedDict):
    count: int
    users: list[PresenceUser]


class ClientFrame(TypedDict):
    type: str
    id: NotRequired[str | int | None]
    data: NotRequired[dict[str, Any]]


class HelloFrame(TypedDict):
    type: Literal["hello"]
    session_id: str
    user: UserRef
    heartbeat_interval: float
    presence_ttl: float


class ReplyFrame(TypedDict):
    type: str
    id: str | int | None
    data: NotRequired[Any]


class ErrorFrame(TypedDict):
    type: Literal["error"]
    id: str | int | None
    code: str
    message: str


class PresenceEvent(TypedDict):
    type: Literal["presence"]
    event: Literal["join", "leave", "status"]
    room: str | None
    user: UserRef
    status: str
