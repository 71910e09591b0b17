"""Presence writes: ``do_<verb>_<noun>()`` change Redis, which logs the resulting events.

Nothing here broadcasts. Every script that changes presence appends its events to the
event log in the same call, and each web process's log reader delivers them to its own
sockets (presence/live/eventlog.py). Messages to one connection (a sweep's expiry) still go
straight to its channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer

from presence import store
from presence.live.batching import get_writer
from presence.live.diffs import dumps
from presence.live.endings import get_end_queue

logger = logging.getLogger(__name__)


def _layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    return layer


async def do_connect_user(
    *,
    cid: str,
    uid: int,
    username: str,
    channel: str,
    ip: str | None,
    user_agent: str,
    gate: store.ConnectGate | None = None,
) -> store.ConnectResult:
    """Mark a new connection present; logs ``open`` and, for the user's first, a join.

    WARNING: on the connect path. One Redis round trip, no SQL: the connection-session row
    is written behind from the ``open`` entry (presence/jobs/sessionlog.py). The gate's limits and
    revocations are checked in the same script; a refusal registers nothing.
    """
    return await store.connect(
        cid=cid,
        uid=uid,
        username=username,
        channel=channel,
        ip=ip,
        user_agent=user_agent,
        gate=gate,
    )


# When an unfinished connect is undone, after its failure: the connect script may still be
# on its way (another connection's command can reach Redis first), so the undo is repeated.
UNDO_CONNECT_AFTER = (0.0, 1.0, 4.0)
_undoing: set[asyncio.Task[None]] = set()


def undo_connect(conn: store.ConnRef) -> None:
    """Remove a connection whose connect did not finish (timed out, failed on the way).

    Runs in the background: the socket is closed at once with 1013, while the registration
    connect.lua may have made is ended (a no-op when it never ran). Without this, a connect
    whose answer was lost stayed online until its TTL.
    """
    task = asyncio.get_running_loop().create_task(_undo_connect(conn))
    _undoing.add(task)
    task.add_done_callback(_undoing.discard)


async def _undo_connect(conn: store.ConnRef) -> None:
    waited = 0.0
    for at in UNDO_CONNECT_AFTER:
        await asyncio.sleep(at - waited)
        waited = at
        try:
            (result,) = await store.end_connections([conn], reason="error", mode="undo")
        except Exception as exc:  # Redis still down: the sweep ends it later
            logger.info("undoing connect %s: %r", conn.cid, exc)
            continue
        if result.state == 1:
            logger.warning("connect %s finished after it was given up; undone", conn.cid)
            return


def undo_join(conn: store.ConnRef, room: str, *, unwanted: Callable[[], bool]) -> None:
    """Take a connection out of ``room`` after a join whose outcome is unknown (its answer
    was lost); in the background, retried like :func:`undo_connect` while ``unwanted()``
    (a later join of the same room by the client stops it). A no-op when the join never
    landed; a leave is logged when it did."""
    task = asyncio.get_running_loop().create_task(_undo_join(conn, room, unwanted))
    _undoing.add(task)
    task.add_done_callback(_undoing.discard)


async def _undo_join(conn: store.ConnRef, room: str, unwanted: Callable[[], bool]) -> None:
    waited = 0.0
    for at in UNDO_CONNECT_AFTER:
        await asyncio.sleep(at - waited)
        waited = at
        if not unwanted():
            return
        try:
            await store.room_leave(conn, room)
        except Exception as exc:  # Redis still down: the key expiry or the sweep ends it
            logger.info("undoing join of %s to %s: %r", conn.cid, room, exc)


async def do_heartbeat(conn: store.ConnRef) -> int:
    """Refresh a connection through the batched hot path: ``store.HB_ALIVE``; ``HB_ENDED``
    when its session ended; ``HB_LOST`` when the store lost it (presence/actions/recovery.py).

    WARNING: hot path. No SQL and no Redis call of its own: the batch writer does one
    EVALSHA for all heartbeats of this process that arrive together.
    """
    return await get_writer().heartbeat(conn)


def do_record_activity(uid: int) -> bool:
    """Move the user's ``last_active`` to now; False when throttled (written recently).

    WARNING: hot path. No Redis call of its own: the time rides with this process's next
    heartbeat batch (presence/live/batching.py), at most one per PRESENCE_ACTIVITY_RESOLUTION.
    """
    return get_writer().activity(uid)


async def do_join_room(conn: store.ConnRef, room: str) -> int:
    """Join ``room``: 1 the user joined (logged), 0 already there, -1 the connection is gone."""
    return await store.room_join(conn, room)


async def do_leave_room(conn: store.ConnRef, room: str) -> bool:
    """Leave ``room``; True (and a logged leave) when it was the user's last connection in it."""
    return await store.room_leave(conn, room)


async def do_set_status(conn: store.ConnRef, status: str, *, username: str) -> set[str]:
    """Store the user's status; logged for everyone and every room of any of their tabs."""
    return await store.set_status(conn.uid, username, status, rooms=conn.rooms)


async def do_end_connection(conn: store.ConnRef, *, reason: str) -> store.EndResult | None:
    """Remove a closed connection; its leaves and ``close`` (``reason``) are logged.

    Through the process's end queue (presence/live/endings.py): ends that arrive together
    share one script call, and one that cannot be written now is retried until Redis answers.
    Returns its result when written within the store's bound, else None (still queued).
    """
    return await get_end_queue().end(conn, reason=reason)


async def do_broadcast(room: str, frame: dict[str, Any]) -> None:
    """Send ``frame`` to every connection in ``room``, on every process (through the log)."""
    await store.publish(room, dumps(frame))


# ---- sweep (presence.jobs.sweep): events for connections the expiry sweep ended
# Channel-layer message a presence consumer answers by closing with 4408 (consumers.py).
EXPIRE_MESSAGE_TYPE = "presence.expire"


async def do_notify_swept(channels: Iterable[str]) -> int:
    """Tell each swept socket to close with 4408 (its leaves were logged by end.lua).

    The socket may still be open on any server process (a client that stopped sending but
    kept the TCP connection); its channel reaches it wherever it is. Returns how many
    expire messages were sent; a full or vanished channel is logged and skipped.
    """
    layer, sent = _layer(), 0
    for channel in channels:
        try:
            await layer.send(channel, {"type": EXPIRE_MESSAGE_TYPE})
            sent += 1
        except Exception as exc:  # e.g. ChannelFull: that client is not reading anyway
            logger.warning("could not send %s to %s: %s", EXPIRE_MESSAGE_TYPE, channel, exc)
    return sent
