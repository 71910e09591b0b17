"""The built-in message types of protocol v1, registered like any other handler (core)."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from presence import store
from presence.access.authz import require_room_access
from presence.actions import connections as actions
from presence.actions import recovery
from presence.conf import app_settings
from presence.handlers.context import HandlerContext
from presence.handlers.registry import NO_REPLY, FrameError, registry
from presence.live.diffs import finish_sync, start_sync
from presence.live.fanout import GLOBAL
from presence.live.replica import Listing, room_listing

ROOM_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
# A walk's position (an index, its ZSCAN cursor: an unsigned 64-bit integer, and a uid bound)
# in one number, as decimal text (presence/store/reads.py, encode_cursor): below
# 2**(64 + 64) * PRESENCE_SHARDS, 45 digits for 16384 shards.
CURSOR_PATTERN = r"^[0-9]{1,48}$"


class RoomPayload(BaseModel):
    room: str = Field(pattern=ROOM_PATTERN)


class ListPayload(BaseModel):
    room: str | None = Field(default=None, pattern=ROOM_PATTERN)
    # Paging (any protocol): "0" starts, the reply's "cursor" continues, null = done.
    cursor: str | None = Field(default=None, pattern=CURSOR_PATTERN)
    limit: int | None = Field(default=None, ge=1)


class SyncPayload(BaseModel):
    room: str | None = Field(default=None, pattern=ROOM_PATTERN)


class StatusPayload(BaseModel):
    status: Literal["online", "away", "busy"]


def _listing(count: int, users: list[Any]) -> dict[str, Any]:
    return {"count": count, "users": users}


async def reply_snapshot(ctx: HandlerContext, room: str | None) -> Any:
    """Answer with the scope's members and the log position they are at (protocol v2).

    The scope's diffs are held back from the moment the snapshot is asked for until the
    reply is out, then released from that position on (presence/live/diffs.py): the client
    sees every later change once and none twice, in order after the snapshot.
    """
    consumer, scope = ctx.consumer, room or GLOBAL
    if room is None and consumer.reader is not None:
        replica = await consumer.reader.global_replica()
        if replica is not None:
            # From the reader's replica, at its position: no Redis call (presence/live/replica.py).
            start_sync(consumer, GLOBAL)
            try:
                await consumer.send_text(replica.reply_text(ctx.frame_id))
            finally:
                finish_sync(consumer, GLOBAL, replica.seq)
            return NO_REPLY
    start_sync(consumer, scope)
    seq = None
    try:
        if room is not None:
            listing = await room_listing(consumer.reader, room, limit=app_settings.SYNC_LIMIT)
            await consumer.send_text(
                _reply_text(
                    ctx.frame_id,
                    listing,
                    f',"seq":{json.dumps(listing.seq)},"complete":{_bool(listing.complete)}',
                )
            )
            seq = listing.seq
            return NO_REPLY
        # The global scope's positions are the reader's own (presence/live/eventlog.py).
        if consumer.reader is not None:
            snap = await consumer.reader.global_snapshot()
        else:
            (snap,) = await store.snapshots([None], limit=app_settings.SYNC_LIMIT)
        await ctx.reply(
            {
                "count": snap.count,
                "users": snap.users,
                "seq": snap.seq,
                "complete": snap.complete,
            }
        )
        seq = snap.seq
    finally:
        finish_sync(consumer, scope, seq)
    return NO_REPLY


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _reply_text(frame_id: str | int | None, listing: Listing, extra: str = "") -> str:
    """A reply frame with a listing's members, as text: their JSON is joined, not re-encoded."""
    return (
        '{"type":"reply","id":'
        + json.dumps(frame_id)
        + ',"data":{"count":'
        + str(listing.count)
        + ',"users":'
        + listing.users_json
        + extra
        + "}}"
    )


# No handler timeout: the hot-path writer bounds the wait itself. While the store is away it
# holds the heartbeat up to PRESENCE_HEARTBEAT_HOLD (plus one bounded call) and then answers
# `unavailable`; a shorter timeout here would turn a failover into handler_timeout errors.
@registry.handler("heartbeat", core=True, version="1", reply_type="heartbeat.ack", timeout=None)
async def heartbeat(ctx: HandlerContext, data: dict[str, Any]) -> Any:
    """Keep this connection online for another PRESENCE_TTL seconds."""
    consumer = ctx.consumer
    state = await actions.do_heartbeat(consumer.conn_ref)
    if state == store.HB_ALIVE:
        return None
    if state == store.HB_LOST and await recovery.do_reassert_connection(consumer.liveness()):
        return None  # the store lost it (failover, restart): written back, socket kept
    # The sweep or an operator ended this session: tell the client to reconnect.
    await consumer.expire()
    return NO_REPLY


@registry.handler("status.set", core=True, version="1", payload=StatusPayload)
async def status_set(ctx: HandlerContext, data: StatusPayload) -> dict[str, Any]:
    """Set the user's status (online, away, busy), shown to others."""
    consumer = ctx.consumer
    async with store.bounded():  # a store that is away answers `unavailable`, not a timeout
        await actions.do_set_status(consumer.conn_ref, data.status, username=consumer.username)
    consumer.status = data.status  # re-asserted after a store loss (actions/recovery.py)
    return {"status": data.status}


@registry.handler("room.join", core=True, version="1", payload=RoomPayload)
async def room_join(ctx: HandlerContext, data: RoomPayload) -> Any:
    """Join a room; the reply lists its current members.

    Idempotent: the join's write, once sent, is finished and adopted by the connection even
    when the handler times out meanwhile (the client is told ``handler_timeout``), so the
    client's retry finds the room joined and is answered with its members, without a second
    join event. A retry that arrives while the first write is still on its way waits for it.
    """
    await require_room_access(ctx.user, data.room, "join")
    consumer = ctx.consumer
    if data.room not in consumer.rooms and await _join(consumer, data.room) == -1:
        await consumer.expire()
        return NO_REPLY
    if consumer.protocol == 2:
        return await reply_snapshot(ctx, data.room)
    listing = await room_listing(consumer.reader, data.room, limit=app_settings.LIST_LIMIT)
    await consumer.send_text(_reply_text(ctx.frame_id, listing))
    return NO_REPLY


async def _join(consumer: Any, room: str) -> int:
    """Write the join once per connection and room; the outcome of do_join_room."""
    pending = consumer.joining.get(room)
    if pending is None:
        if len(consumer.rooms) + len(consumer.joining) >= app_settings.MAX_ROOMS_PER_CONNECTION:
            raise FrameError(
                "limit_exceeded",
                f"a connection may be in at most {app_settings.MAX_ROOMS_PER_CONNECTION} rooms",
            )
        # Subscribe before announcing, so this connection sees events from now on.
        consumer.join_scope(room)
        pending = asyncio.ensure_future(actions.do_join_room(consumer.conn_ref, room))
        consumer.joining[room] = pending
        # Runs before any waiter resumes (callbacks run in the order they were added).
        pending.add_done_callback(functools.partial(_settle_join, consumer, room))
    # Shielded: a handler timeout cancels the wait, never the write.
    return int(await asyncio.shield(pending))


def _settle_join(consumer: Any, room: str, pending: asyncio.Future[int]) -> None:
    """Adopt the join's outcome in the connection's state, whoever is still waiting for it."""
    consumer.joining.pop(room, None)
    if not pending.cancelled() and pending.exception() is None and pending.result() != -1:
        consumer.rooms.add(room)
        return
    consumer.leave_scope(room)
    if not pending.cancelled() and pending.exception() is not None:
        # The write may have landed before its answer was lost: take it back, so the user is
        # either in the room and the connection knows it, or not in it (a no-op if not).
        actions.undo_join(
            consumer.conn_ref,
            room,
            unwanted=lambda: room not in consumer.rooms and room not in consumer.joining,
        )


@registry.handler("room.leave", core=True, version="1", payload=RoomPayload)
async def room_leave(ctx: HandlerContext, data: RoomPayload) -> dict[str, Any]:
    """Leave a room."""
    consumer = ctx.consumer
    if data.room in consumer.rooms:
        conn = consumer.conn_ref
        consumer.rooms.discard(data.room)
        consumer.leave_scope(data.room)
        await actions.do_leave_room(conn, data.room)
    return {"room": data.room}


@registry.handler("presence.list", core=True, version="1", payload=ListPayload)
async def presence_list(ctx: HandlerContext, data: ListPayload) -> dict[str, Any]:
    """Who is online: everyone, or the members of ``data.room``; pages with ``cursor``."""
    if data.room is not None:
        await require_room_access(ctx.user, data.room, "list")
    limit = min(data.limit or app_settings.LIST_LIMIT, app_settings.LIST_LIMIT)
    # Bounded: a store that is away answers `unavailable` (not handler_timeout) in seconds.
    async with store.bounded():
        if data.cursor is None:
            return _listing(*await store.alist_online(data.room, limit=limit))
        # Everyone: the cursor walks every shard's index (presence/store/reads.py).
        count, users, cursor = await store.alist_online_page(data.room, int(data.cursor), limit)
    return {**_listing(count, users), "cursor": str(cursor) if cursor else None}


@registry.handler("presence.sync", core=True, version="1", payload=SyncPayload)
async def presence_sync(ctx: HandlerContext, data: SyncPayload) -> Any:
    """A scope's members and the log position to apply later diffs from (protocol v2)."""
    if data.room is not None:
        await require_room_access(ctx.user, data.room, "list")
    return await reply_snapshot(ctx, data.room)
