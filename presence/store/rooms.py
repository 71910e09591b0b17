"""Rooms and status: join, leave, set status, publish to a room."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from presence.store.clients import grace_ms, log_maxlen, now_ms
from presence.store.connections import ConnRef
from presence.store.keys import ROOM_USER_SUFFIX, keys
from presence.store.scripts import arun_many, script
from presence.store.shards import room_home, user_home
from presence.store.topology import aclient_for, client_for, split_by_node


# A join and a leave run in two halves (docs/presence.md, "Rooms across shards"): the user
# half on the user's shard (conn:<cid>:rooms), the room half on the room's shard, idempotent
# by connection id. A join writes the user half first and a leave removes it last, so the
# connection's room set always holds every room it is in: the connection's end (a close or
# the sweep) runs the room halves for all of them, whatever half-done join or leave a killed
# process left. A retry after a timeout re-runs both and logs nothing twice; what else a
# process killed between halves leaves (an end's room halves) lapses, and repair_rooms (the
# sweep) removes it and logs its leave.
def _join_user_half(conn: ConnRef, room: str) -> tuple[int, list[str], list[Any]]:
    shard = user_home(conn.uid)
    k = keys(shard)
    return shard, [k.conn(conn.cid), k.conn_rooms(conn.cid), k.user(conn.uid)], [grace_ms(), room]


def _join_room_half(
    conn: ConnRef, room: str, now: int, user_half: list[Any]
) -> tuple[int, list[str], list[Any]]:
    shard = room_home(room)
    k = keys(shard)
    exp, username, status = user_half[0], user_half[1], user_half[2]
    ks = [k.room(room), k.room_user(room, conn.uid), k.rooms, k.events]
    args = [now, grace_ms(), conn.cid, conn.uid, room, log_maxlen(), exp, username, status]
    return shard, ks, args


async def room_join(conn: ConnRef, room: str, *, now: int | None = None) -> int:
    """Add the connection to ``room``: 1 user joined (logged), 0 already there, -1 gone.

    Two round trips (the user half, then the room half): a join is not the hot path."""
    now = now or now_ms()
    shard, ks, args = _join_user_half(conn, room)
    user_half = await script("room_join_user").arun(aclient_for(shard), ks, args)
    if user_half == -1:
        return -1
    shard, ks, args = _join_room_half(conn, room, now, user_half)
    try:
        return int(await script("room_join_room").arun(aclient_for(shard), ks, args))
    except ResponseError:
        # The room half failed before its first write (a script checks every key first):
        # take the room back off the connection. Not on a timeout: the half may have run,
        # and a retry of the join (or the repair) settles that case.
        if user_half[3] == 1:
            await script("room_leave_user").arun(
                aclient_for(user_home(conn.uid)), *_undo(conn, room)
            )
        raise


def room_join_sync(conn: ConnRef, room: str, *, now: int | None = None) -> int:
    """Sync twin of :func:`room_join` (tests and tasks)."""
    now = now or now_ms()
    shard, ks, args = _join_user_half(conn, room)
    user_half = script("room_join_user").run(client_for(shard), ks, args)
    if user_half == -1:
        return -1
    shard, ks, args = _join_room_half(conn, room, now, user_half)
    try:
        return int(script("room_join_room").run(client_for(shard), ks, args))
    except ResponseError:  # as room_join
        if user_half[3] == 1:
            script("room_leave_user").run(client_for(user_home(conn.uid)), *_undo(conn, room))
        raise


def _undo(conn: ConnRef, room: str) -> tuple[list[str], list[Any]]:
    """room_leave_user.lua's keys and args: a user half of a join taken back."""
    k = keys(user_home(conn.uid))
    return [k.conn_rooms(conn.cid), k.user(conn.uid)], [room]


async def room_leave(conn: ConnRef, room: str) -> bool:
    """Take the connection out of ``room``; True when the user left it altogether (logged).

    The room half first, then the user half: a process killed between them leaves the room
    on the connection, whose end (a close or the sweep) then runs the room half again, which
    changes nothing (the other order left a room entry that only the repair removes, a key
    grace after it lapsed). A room half that fails writes nothing, so nothing is undone;
    it also finishes a leave whose first attempt died between the halves. Three round trips
    (the name and status the leave event carries are read first): a leave is not the hot
    path."""
    shard = user_home(conn.uid)
    k, client = keys(shard), aclient_for(shard)
    username, status = await client.hmget(k.user(conn.uid), ["username", "status"])  # type: ignore[misc]
    room_k = keys(room_home(room))
    left = await script("room_leave_room").arun(
        aclient_for(room_k.shard),
        [room_k.room(room), room_k.room_user(room, conn.uid), room_k.events],
        [conn.cid, conn.uid, room, now_ms(), log_maxlen(), username or "", status or "online"],
    )
    await script("room_leave_user").arun(client, [k.conn_rooms(conn.cid), k.user(conn.uid)], [room])
    return int(left) == 1


def repair_rooms(shard: int, now: int | None = None, *, batch: int = 200) -> int:
    """Remove ``shard``'s lapsed room members and log their leaves (repair_rooms.lua).

    Lapsed = the member's score is at least PRESENCE_KEY_GRACE in the past: what a process
    killed between the halves of a join or an end left (a graceful end and the sweep remove
    members themselves). Idempotent; the sweep calls it per shard. Rooms come from the
    shard's rooms index in batches of ``batch``, one round trip each plus one read.
    Returns the number of leaves logged.
    """
    now = now or now_ms()
    cutoff = now - grace_ms()
    client, k = client_for(shard), keys(shard)
    logged = 0
    while True:
        raw: Any = client.zrangebyscore(k.rooms, "-inf", cutoff, start=0, num=batch)
        rooms = [str(room) for room in raw]
        if not rooms:
            return logged
        ks = [k.rooms, k.events, *(k.room(room) for room in rooms)]
        args = [now, cutoff, log_maxlen(), ROOM_USER_SUFFIX, *rooms]
        logged += int(script("repair_rooms").run(client, ks, args))
        if len(rooms) < batch:
            return logged


async def get_status(uid: int) -> str:
    """The user's current status (``online`` when none was set)."""
    k = keys(user_home(uid))
    return str(await aclient_for(k.shard).hget(k.user(uid), "status") or "online")  # type: ignore[misc]


async def set_status(uid: int, username: str, status: str, rooms: Iterable[str] = ()) -> set[str]:
    """Store the user's status (one per user, shared by all their connections) and log it.

    The ``status`` events go to the global scope (the user's shard's stream, with the
    status: status.lua) and to every room of any of the user's live connections (``rooms``:
    the caller's own, known without asking), each on its room's shard's stream
    (status_rooms.lua; one pipeline per node). Returns those rooms; three round trips
    (reading the other connections' rooms, status.lua, the rooms' entries).
    """
    k = keys(user_home(uid))
    client = aclient_for(k.shard)
    cids = await client.zrangebyscore(k.user_conns(uid), f"({now_ms()}", "+inf")
    all_rooms = set(rooms)
    if cids:
        pipe = client.pipeline(transaction=False)
        for cid in cids:
            pipe.smembers(k.conn_rooms(cid))
        all_rooms = all_rooms.union(*await pipe.execute())
    now = now_ms()
    await script("status").arun(
        client, [k.user(uid), k.events], [now, log_maxlen(), uid, username, status, 0]
    )
    by_shard: dict[int, list[str]] = {}
    for room in sorted(all_rooms):
        by_shard.setdefault(room_home(room), []).append(room)
    lua, nodes = script("status_rooms"), split_by_node(sorted(by_shard))
    calls = [
        [
            (
                lua,
                [keys(shard).events],
                [now, log_maxlen(), uid, username, status, *by_shard[shard]],
            )
            for shard in part
        ]
        for part in nodes
    ]
    await asyncio.gather(
        *(arun_many(aclient_for(p[0]), c) for p, c in zip(nodes, calls, strict=True))
    )
    return all_rooms


async def publish(room: str, frame_text: str) -> str:
    """Log an application frame for every connection in ``room`` (on the room's shard's
    stream); returns the entry id."""
    k = keys(room_home(room))
    return str(
        await script("publish").arun(
            aclient_for(k.shard), [k.events], [now_ms(), log_maxlen(), room, frame_text]
        )
    )
