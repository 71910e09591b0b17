"""The built-in message types of protocol v1, registered like any other handler (core)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .. import actions, store
from ..app_settings import app_settings
from .context import HandlerContext
from .registry import NO_REPLY, FrameError, registry

ROOM_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class RoomPayload(BaseModel):
    room: str = Field(pattern=ROOM_PATTERN)


class ListPayload(BaseModel):
    room: str | None = Field(default=None, pattern=ROOM_PATTERN)


class StatusPayload(BaseModel):
    status: Literal["online", "away", "busy"]


def _listing(count: int, users: list[Any]) -> dict[str, Any]:
    return {"count": count, "users": users}


@registry.handler("heartbeat", core=True, version="1", reply_type="heartbeat.ack")
async def heartbeat(ctx: HandlerContext, data: dict[str, Any]) -> Any:
    """Keep this connection online for another PRESENCE_TTL seconds."""
    if await actions.do_heartbeat(ctx.consumer.conn_ref):
        return None
    # The sweep (or a Redis restart) ended this session: tell the client to reconnect.
    await ctx.consumer.expire()
    return NO_REPLY


@registry.handler("status.set", core=True, version="1", payload=StatusPayload)
async def status_set(ctx: HandlerContext, data: StatusPayload) -> dict[str, Any]:
    """Set the user's status (online, away, busy), shown to others."""
    consumer = ctx.consumer
    await actions.do_set_status(consumer.conn_ref, data.status, username=consumer.username)
    return {"status": data.status}


@registry.handler("room.join", core=True, version="1", payload=RoomPayload)
async def room_join(ctx: HandlerContext, data: RoomPayload) -> dict[str, Any]:
    """Join a room; the reply lists its current members."""
    consumer = ctx.consumer
    if data.room not in consumer.rooms:
        if len(consumer.rooms) >= app_settings.MAX_ROOMS_PER_CONNECTION:
            raise FrameError(
                "limit_exceeded",
                f"a connection may be in at most {app_settings.MAX_ROOMS_PER_CONNECTION} rooms",
            )
        # Subscribe before announcing, so this connection sees events from now on.
        await consumer.join_room_group(data.room)
        joined = await actions.do_join_room(
            consumer.conn_ref, data.room, username=consumer.username
        )
        if joined == -1:
            await consumer.leave_room_group(data.room)
            await consumer.expire()
            return NO_REPLY
        consumer.rooms.add(data.room)
    return _listing(*await store.alist_online(store.get_async_redis(), data.room))


@registry.handler("room.leave", core=True, version="1", payload=RoomPayload)
async def room_leave(ctx: HandlerContext, data: RoomPayload) -> dict[str, Any]:
    """Leave a room."""
    consumer = ctx.consumer
    if data.room in consumer.rooms:
        conn = consumer.conn_ref
        consumer.rooms.discard(data.room)
        await consumer.leave_room_group(data.room)
        await actions.do_leave_room(conn, data.room, username=consumer.username)
    return {"room": data.room}


@registry.handler("presence.list", core=True, version="1", payload=ListPayload)
async def presence_list(ctx: HandlerContext, data: ListPayload) -> dict[str, Any]:
    """Who is online: everyone, or the members of ``data.room``."""
    return _listing(*await store.alist_online(store.get_async_redis(), data.room))
