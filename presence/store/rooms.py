"""Rooms and status: join, leave, set status, publish to a room."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from presence.store.clients import grace_ms, log_maxlen, now_ms
from presence.store.connections import ConnRef
from presence.store.keys import keys
from presence.store.scripts import script
from presence.store.topology import aclient_for, client_for


def _plan_room_join(conn: ConnRef, room: str, now: int) -> tuple[list[str], list[Any]]:
    k = keys()
    return (
        [
            k.conn(conn.cid),
            k.conn_rooms(conn.cid),
            k.room(room),
            k.room_user(room, conn.uid),
            k.user(conn.uid),
            k.events,
        ],
        [now, grace_ms(), conn.cid, conn.uid, room, log_maxlen()],
    )


async def room_join(conn: ConnRef, room: str, *, now: int | None = None) -> int:
    """Add the connection to ``room``: 1 user joined (logged), 0 already there, -1 gone."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    ks, args = _plan_room_join(conn, room, now or now_ms())
    return int(await script("room_join").arun(client, ks, args))


def room_join_sync(conn: ConnRef, room: str, *, now: int | None = None) -> int:
    """Sync twin of :func:`room_join` (tests and tasks)."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    ks, args = _plan_room_join(conn, room, now or now_ms())
    return int(script("room_join").run(client, ks, args))


async def room_leave(conn: ConnRef, room: str) -> bool:
    """Take the connection out of ``room``; True when the user left it altogether (logged)."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    k = keys()
    left = await script("room_leave").arun(
        client,
        [
            k.conn_rooms(conn.cid),
            k.room(room),
            k.room_user(room, conn.uid),
            k.user(conn.uid),
            k.events,
        ],
        [conn.cid, conn.uid, room, now_ms(), log_maxlen()],
    )
    return int(left) == 1


async def get_status(uid: int) -> str:
    """The user's current status (``online`` when none was set)."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    return str(await client.hget(keys().user(uid), "status") or "online")  # type: ignore[misc]


async def set_status(uid: int, username: str, status: str, rooms: Iterable[str] = ()) -> set[str]:
    """Store the user's status (one per user, shared by all their connections) and log it.

    The ``status`` events go to the global scope and to every room of any of the user's
    live connections (``rooms``: the caller's own, known without asking). Returns those
    rooms; two round trips (reading the other connections' rooms, then status.lua).
    """
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    k = keys()
    cids = await client.zrangebyscore(k.user_conns(uid), f"({now_ms()}", "+inf")
    all_rooms = set(rooms)
    if cids:
        pipe = client.pipeline(transaction=False)
        for cid in cids:
            pipe.smembers(k.conn_rooms(cid))
        all_rooms = all_rooms.union(*await pipe.execute())
    ordered = sorted(all_rooms)
    await script("status").arun(
        client,
        [k.user(uid), k.events],
        [now_ms(), log_maxlen(), uid, username, status, len(ordered), *ordered],
    )
    return all_rooms


async def publish(room: str, frame_text: str) -> str:
    """Log an application frame for every connection in ``room``; returns the entry id."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    return str(
        await script("publish").arun(
            client, [keys().events], [now_ms(), log_maxlen(), room, frame_text]
        )
    )
