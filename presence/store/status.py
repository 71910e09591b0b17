"""Many users' presence at once: online, status and last activity, in one round trip.

The bulk status of the HTTP API (``POST /api/presence/status/``) and the watch list's
reply read through here. Whatever the number of users, it is ONE round trip: a
``MULTI``/``EXEC`` block (every key shares the deployment's hash tag, and the answer is one
consistent moment) of a ``ZMSCORE`` of the activity index, then per user an ``HMGET`` of
the status and held leave, and a ``ZCOUNT`` of the live connections (the same test of
"online" as the listings: a connection counts while its expiry is in the future, and a
leave held by the grace window keeps the user online).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presence.store.clients import now_ms
from presence.store.keys import keys
from presence.store.topology import aclient_for, client_for


@dataclass(frozen=True)
class UserStatus:
    """One user's presence as the store knows it (``last_seen`` lives in the session rows)."""

    uid: int
    online: bool
    status: str  # "offline" when not online
    connections: int
    last_active: int | None  # Unix seconds of the last connect or activity; None: never


def _queue(pipe: Any, uids: Sequence[int], now: int) -> None:
    k = keys()
    pipe.zmscore(k.active, [str(u) for u in uids])
    for uid in uids:
        pipe.hmget(k.user(uid), "status", "held")
        pipe.zcount(k.user_conns(uid), f"({now}", "+inf")


def _format(uids: Sequence[int], replies: Sequence[Any]) -> list[UserStatus]:
    active, out, now = replies[0], [], now_ms()
    for i, uid in enumerate(uids):
        (status, held), connections = replies[1 + 2 * i], int(replies[2 + 2 * i])
        # A held leave (the grace window) keeps the user online with no live connection.
        online = connections > 0 or (held is not None and int(held) > now)
        out.append(
            UserStatus(
                uid=uid,
                online=online,
                status=(status or "online") if online else "offline",
                connections=connections,
                last_active=None if active[i] is None else int(active[i]),
            )
        )
    return out


def users_status(uids: Sequence[int]) -> list[UserStatus]:
    """Presence of each of ``uids``, in their order. ONE round trip (a transaction)."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    if not uids:
        return []
    pipe = client.pipeline(transaction=True)
    _queue(pipe, uids, now_ms())
    return _format(uids, pipe.execute())


async def ausers_status(uids: Sequence[int]) -> list[UserStatus]:
    """Async twin of :func:`users_status` (the HTTP API's reads run on the asyncio client)."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    if not uids:
        return []
    pipe = client.pipeline(transaction=True)
    _queue(pipe, uids, now_ms())
    return _format(uids, await pipe.execute())


async def awatch_snapshot(uids: Sequence[int]) -> tuple[str, list[UserStatus]]:
    """(log position, presence of each of ``uids``), read together: the watch list's reply.

    ONE round trip: the newest log id joins the same MULTI, so the states are exactly those
    after that entry, and the watch frames continue from it (presence/live/watches.py).
    """
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    pipe = client.pipeline(transaction=True)
    pipe.xrevrange(keys().events, "+", "-", count=1)
    if uids:
        _queue(pipe, uids, now_ms())
    last, *rest = await pipe.execute()
    seq = str(last[0][0]) if last else "0-0"
    return seq, _format(uids, rest) if uids else []


def user_rooms(uid: int) -> list[str]:
    """The rooms ``uid`` is in (any live connection of theirs), sorted: where-now.

    Two round trips whatever the number of connections and rooms: the live connections
    (``ZRANGEBYSCORE``, at most PRESENCE_MAX_CONNECTIONS_PER_USER), then one ``SUNION`` of
    their room sets.
    """
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    k = keys()
    cids: Any = client.zrangebyscore(k.user_conns(uid), f"({now_ms()}", "+inf")
    if not cids:
        return []
    rooms: Any = client.sunion([k.conn_rooms(str(cid)) for cid in cids])
    return sorted(str(room) for room in rooms)


async def auser_rooms(uid: int) -> list[str]:
    """Async twin of :func:`user_rooms`."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    k = keys()
    cids: Any = await client.zrangebyscore(k.user_conns(uid), f"({now_ms()}", "+inf")
    if not cids:
        return []
    rooms: Any = await client.sunion([k.conn_rooms(str(cid)) for cid in cids])  # type: ignore[misc]
    return sorted(str(room) for room in rooms)
