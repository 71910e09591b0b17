"""What a handler sees of the connection that sent the message."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from presence import store
from presence.actions import connections as actions
from presence.live.diffs import Subscriber
from presence.live.eventlog import EventLogReader


class Connection(Subscriber, Protocol):
    """What handlers may use of the connection that sent a frame.

    ``presence.consumers.Connection`` implements it; the handlers sit below the
    consumer in the layers, so they name this protocol instead of the class.
    """

    user_id: int
    username: str
    session_id: str
    scope: Mapping[str, Any]
    rooms: set[str]
    reader: EventLogReader | None
    status: str  # the last status this connection set ("online" until it sets one)

    @property
    def conn_ref(self) -> store.ConnRef: ...

    async def send_frame(self, frame: dict[str, Any]) -> None: ...

    async def send_text(self, text: str) -> None: ...

    async def expire(self) -> None: ...

    def liveness(self) -> store.Liveness: ...

    def join_scope(self, room: str) -> None: ...

    def leave_scope(self, room: str) -> None: ...


class HandlerContext:
    """The sending connection: its user, session and rooms, and ways to talk back.

    Identity comes only from the authenticated connection; nothing in a frame can change it.
    """

    def __init__(self, consumer: Connection, frame_id: str | int | None) -> None:
        self._consumer = consumer
        self.frame_id = frame_id

    @property
    def user_id(self) -> int:
        return self._consumer.user_id

    @property
    def username(self) -> str:
        return self._consumer.username

    @property
    def user(self) -> Any:
        """The authenticated Django user (loaded at connect; do not query through it here)."""
        return self._consumer.scope["user"]

    @property
    def session_id(self) -> str:
        return self._consumer.session_id

    @property
    def rooms(self) -> frozenset[str]:
        """Rooms this connection has joined."""
        return frozenset(self._consumer.rooms)

    @property
    def consumer(self) -> Connection:
        """The consumer itself, for the built-in handlers; applications should not need it."""
        return self._consumer

    async def send(self, frame: dict[str, Any]) -> None:
        """Send a frame to this connection only."""
        await self._consumer.send_frame(frame)

    async def reply(self, data: Any, reply_type: str = "reply") -> None:
        """Answer the message now (the handler then returns ``NO_REPLY``)."""
        await self._consumer.send_frame({"type": reply_type, "id": self.frame_id, "data": data})

    async def broadcast(self, room: str, frame: dict[str, Any]) -> None:
        """Send ``frame`` to every connection in ``room`` (this one included, if it is in it).

        One log entry, whatever the room's size: each web process's log reader sends it to
        its own sockets in the room.
        """
        await actions.do_broadcast(room, frame)
