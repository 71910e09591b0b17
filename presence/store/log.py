"""The presence event log (``{P}:events``): positions, reads, and snapshots taken at a position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aredis

from presence.protocol.types import PresenceUser
from presence.store.clients import bounded, now_ms
from presence.store.keys import keys
from presence.store.reads import format_users, plan_index, queue_details, queue_listing

# event log (presence.live.eventlog): positions, reads and snapshots taken at a position.
LogEntry = tuple[str, dict[str, str]]


async def log_position(client: aredis.Redis) -> str:
    """The id of the newest log entry ("0-0" when the log is empty): where a reader starts."""
    last = await client.xrevrange(keys().events, "+", "-", count=1)
    return str(last[0][0]) if last else "0-0"


async def read_log(
    client: aredis.Redis, after: str, *, count: int, block_ms: int
) -> list[LogEntry]:
    """Entries after ``after``, oldest first; waits up to ``block_ms`` when there are none."""
    async with bounded(block_ms / 1000):
        reply = await client.xread({keys().events: after}, count=count, block=block_ms)
    if not reply:
        return []
    # decode_responses: [[stream, [(id, {field: value}), ...]]]
    return [(str(eid), fields) for eid, fields in reply[0][1]]


@dataclass
class Snapshot:
    """Who is in a scope at log position ``seq`` (room None = everyone online)."""

    room: str | None
    seq: str
    count: int
    users: list[PresenceUser]
    complete: bool


async def snapshots(
    client: aredis.Redis, rooms: Sequence[str | None], *, limit: int
) -> list[Snapshot]:
    """Members of each scope and the log position they are consistent with.

    Two round trips: one MULTI reading the log position and each scope's members together
    (nothing can be logged between them), then the members' names and statuses. Events
    after ``seq`` are what a client applies on top; a name or status read in the second
    trip may already be newer, which those later events then repeat harmlessly.
    """
    now = now_ms()
    pipe = client.pipeline(transaction=True)
    pipe.xrevrange(keys().events, "+", "-", count=1)
    for room in rooms:
        queue_listing(pipe, plan_index(room), now, limit)
    raw = await pipe.execute()
    seq = str(raw[0][0][0]) if raw[0] else "0-0"
    listed = [(int(raw[1 + 2 * i]), list(raw[2 + 2 * i])) for i in range(len(rooms))]
    pipe = client.pipeline(transaction=False)
    for _, uids in listed:
        queue_details(pipe, uids, now)
    details = await pipe.execute() if any(uids for _, uids in listed) else []
    out, at = [], 0
    for room, (count, uids) in zip(rooms, listed, strict=True):
        users = format_users(uids, details[at : at + 2 * len(uids)])
        at += 2 * len(uids)
        out.append(Snapshot(room, seq, count, users, complete=len(uids) >= count))
    return out


async def alist_page(
    client: aredis.Redis, room: str | None, cursor: int, limit: int
) -> tuple[int, list[PresenceUser], int]:
    """One page of a scope's members: (exact count, users, next cursor; 0 = done).

    ZSCAN walks the index in a stable order whatever the heartbeats do to the scores, so a
    listing of any size can be paged; a member present throughout is returned at least
    once (a user may show up on two pages while the index is rehashed).
    """
    index, now = plan_index(room), now_ms()
    pipe = client.pipeline(transaction=False)
    pipe.zcount(index, f"({now}", "+inf")
    pipe.zscan(index, cursor, count=limit)
    count, (next_cursor, members) = await pipe.execute()
    uids = [str(uid) for uid, score in members if score > now]
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, uids, now)
    users = format_users(uids, await pipe.execute()) if uids else []
    return int(count), users, int(next_cursor)


@dataclass
class Members:
    """A scope's member ids at log position ``seq``, without their names (room None = all)."""

    seq: str
    count: int  # members online, all of them (``uids`` may stop at the limit)
    uids: list[str]
    everyone: int  # users online anywhere: whether a process replica of them can be kept


async def members(client: aredis.Redis, room: str | None, *, limit: int) -> Members:
    """The ids in a scope at one log position: one MULTI of a fixed number of commands.

    WARNING: on the room.join path. Its cost does not grow with the scope: the names and
    statuses come from the process's replica (presence/live/replica.py), not from two
    commands per member as in :func:`snapshots`.
    """
    now = now_ms()
    pipe = client.pipeline(transaction=True)
    pipe.xrevrange(keys().events, "+", "-", count=1)
    queue_listing(pipe, plan_index(room), now, limit)
    pipe.zcount(keys().users, f"({now}", "+inf")
    last, count, uids, everyone = await pipe.execute()
    seq = str(last[0][0]) if last else "0-0"
    return Members(seq, int(count), [str(uid) for uid in uids], int(everyone))


async def adetails(client: aredis.Redis, uids: Sequence[str]) -> list[PresenceUser]:
    """Names, statuses and connection counts of ``uids`` (two commands each); lapsed left out."""
    if not uids:
        return []
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, uids, now_ms())
    return format_users(uids, await pipe.execute())
