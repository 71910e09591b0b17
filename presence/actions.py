"""Presence writes: ``do_<verb>_<noun>()`` update Redis and broadcast the resulting events.

Events go out through the channel layer: a room's members are the group ``room_group(room)``,
and every connection is in ``GLOBAL_GROUP`` for events with ``room: null``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from channels.layers import BaseChannelLayer, get_channel_layer

from . import store
from .app_settings import app_settings
from .batching import get_writer
from .groups import GLOBAL_GROUP, room_group
from .types import PresenceEvent

logger = logging.getLogger(__name__)


def _layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    return layer


def presence_event(
    event: str, *, uid: int, username: str, status: str, room: str | None
) -> PresenceEvent:
    """The wire form of a join/leave/status event."""
    return {
        "type": "presence",
        "event": event,  # type: ignore[typeddict-item]
        "room": room,
        "user": {"id": uid, "username": username},
        "status": status,
    }


async def broadcast_presence(
    event: str,
    *,
    uid: int,
    username: str,
    status: str,
    rooms: Iterable[str] = (),
    include_global: bool = False,
) -> None:
    """Send one presence event to each of ``rooms`` and, if asked, to everyone."""
    layer = _layer()
    targets: list[tuple[str, str | None]] = [(room_group(r), r) for r in rooms]
    if include_global and app_settings.GLOBAL_EVENTS:
        targets.append((GLOBAL_GROUP, None))
    for group, room in targets:
        frame = presence_event(event, uid=uid, username=username, status=status, room=room)
        await layer.group_send(group, {"type": "presence.frame", "frame": frame})


async def do_connect_user(
    *, cid: str, uid: int, username: str, channel: str
) -> store.ConnectResult:
    """Mark a new connection present; the user's first connection emits a global join."""
    result = await store.connect(
        store.get_async_redis(), cid=cid, uid=uid, username=username, channel=channel
    )
    if result.joined:
        await broadcast_presence(
            "join", uid=uid, username=username, status=result.status, include_global=True
        )
    return result


async def do_heartbeat(conn: store.ConnRef) -> bool:
    """Refresh a connection through the batched hot path; False when its session ended.

    WARNING: hot path. No SQL and no Redis call of its own: the batch writer does one
    EVALSHA for all heartbeats of this process that arrive together.
    """
    return await get_writer().heartbeat(conn)


async def do_join_room(conn: store.ConnRef, room: str, *, username: str) -> int:
    """Join ``room``; a user's first connection in it emits a join to the room."""
    client = store.get_async_redis()
    joined = await store.room_join(client, conn, room)
    if joined == 1:
        # The status is the user's, and another tab may have changed it since this one.
        status = await store.get_status(client, conn.uid)
        await broadcast_presence(
            "join", uid=conn.uid, username=username, status=status, rooms=[room]
        )
    return joined


async def do_leave_room(conn: store.ConnRef, room: str, *, username: str) -> bool:
    """Leave ``room``; the user's last connection in it emits a leave to the room."""
    client = store.get_async_redis()
    left = await store.room_leave(client, conn, room)
    if left:
        status = await store.get_status(client, conn.uid)  # still online elsewhere
        await broadcast_presence(
            "leave", uid=conn.uid, username=username, status=status, rooms=[room]
        )
    return left


async def do_set_status(conn: store.ConnRef, status: str, *, username: str) -> None:
    """Store the user's status and tell everyone and every room any of their tabs is in."""
    rooms = await store.set_status(store.get_async_redis(), conn.uid, status)
    await broadcast_presence(
        "status",
        uid=conn.uid,
        username=username,
        status=status,
        rooms=sorted(rooms | set(conn.rooms)),
        include_global=True,
    )


async def broadcast_end_results(
    results: Sequence[store.EndResult], users: dict[str, tuple[int, str]]
) -> None:
    """Emit the leaves end.lua reported; ``users`` maps cid -> (uid, username)."""
    for res in results:
        if res.state != 1 or (not res.global_left and not res.rooms_left):
            continue
        uid, username = users[res.cid]
        await broadcast_presence(
            "leave",
            uid=uid,
            username=username,
            status="offline",
            rooms=res.rooms_left,
            include_global=res.global_left,
        )


async def do_disconnect_user(conn: store.ConnRef, *, username: str) -> store.EndResult:
    """Remove a closed connection at once and emit the leaves it causes."""
    (result,) = await store.end_connections(store.get_async_redis(), [conn])
    await broadcast_end_results([result], {conn.cid: (conn.uid, username)})
    return result


# ---- sweep (presence.sweep): events for connections the expiry sweep ended
# Channel-layer message a presence consumer answers by closing with 4408 (consumers.py).
EXPIRE_MESSAGE_TYPE = "presence.expire"


async def do_notify_swept(
    results: Sequence[store.EndResult],
    users: dict[str, tuple[int, str]],
    channels: Iterable[str],
) -> int:
    """Emit the leaves a sweep caused and tell each swept socket to close with 4408.

    The socket may still be open on any server process (a client that stopped sending but
    kept the TCP connection); its channel reaches it wherever it is. Returns how many
    expire messages were sent; a full or vanished channel is logged and skipped.
    """
    await broadcast_end_results(results, users)
    layer, sent = _layer(), 0
    for channel in channels:
        try:
            await layer.send(channel, {"type": EXPIRE_MESSAGE_TYPE})
            sent += 1
        except Exception as exc:  # e.g. ChannelFull: that client is not reading anyway
            logger.warning("could not send %s to %s: %s", EXPIRE_MESSAGE_TYPE, channel, exc)
    return sent
