"""Many users' presence at once: online, status and last activity, one round trip per node.

The bulk status of the HTTP API (``POST /api/presence/status/``) and the watch list's
reply read through here. Whatever the number of users, it is one round trip per node
holding some of their shards (the nodes at once): per shard a ``ZMSCORE`` of its activity
index, then per user an ``HMGET`` of the status and held leave, and a ``ZCOUNT`` of the live
connections (the same test of "online" as the listings: a connection counts while its
expiry is in the future, and a leave held by the grace window keeps the user online). Users
on different shards are read in one pipeline, not one MULTI (a MULTI cannot span slots):
each user's answer is consistent, not the whole set at one instant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presence.store.clients import now_ms
from presence.store.keys import keys
from presence.store.shards import user_home
from presence.store.topology import aclient_for, client_for, split_by_node


def position(seq: str) -> tuple[int, int]:
    """A log id ("<ms>-<n>") as a comparable pair."""
    ms, _, n = seq.partition("-")
    return int(ms), int(n or 0)


@dataclass(frozen=True)
class UserStatus:
    """One user's presence as the store knows it (``last_seen`` lives in the session rows)."""

    uid: int
    online: bool
    status: str  # "offline" when not online
    connections: int
    last_active: int | None  # Unix seconds of the last connect or activity; None: never


def _queue(pipe: Any, shard: int, uids: Sequence[int], now: int) -> None:
    k = keys(shard)
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


def _by_shard(uids: Sequence[int]) -> dict[int, list[int]]:
    by_shard: dict[int, list[int]] = {}
    for uid in dict.fromkeys(uids):
        by_shard.setdefault(user_home(uid), []).append(uid)
    return by_shard


def _queue_node(
    pipe: Any, part: Sequence[int], by_shard: dict[int, list[int]], *, seq: bool
) -> None:
    now = now_ms()
    for shard in part:
        if seq:
            pipe.xrevrange(keys(shard).events, "+", "-", count=1)
        _queue(pipe, shard, by_shard[shard], now)


def _read_node(
    replies: Sequence[Any], part: Sequence[int], by_shard: dict[int, list[int]], *, seq: bool
) -> tuple[list[str], dict[int, UserStatus]]:
    seqs, found, at = [], {}, 0
    for shard in part:
        if seq:
            last = replies[at]
            seqs.append(str(last[0][0]) if last else "0-0")
            at += 1
        uids = by_shard[shard]
        size = 1 + 2 * len(uids)
        for status in _format(uids, replies[at : at + size]):
            found[status.uid] = status
        at += size
    return seqs, found


def users_status(uids: Sequence[int]) -> list[UserStatus]:
    """Presence of each of ``uids``, in their order: one round trip per node holding some
    of the users' shards (a pipeline; each user's reads are on their own shard)."""
    if not uids:
        return []
    by_shard, found = _by_shard(uids), {}
    for part in split_by_node(sorted(by_shard)):
        pipe = client_for(part[0]).pipeline(transaction=False)
        _queue_node(pipe, part, by_shard, seq=False)
        found.update(_read_node(pipe.execute(), part, by_shard, seq=False)[1])
    return [found[uid] for uid in uids]


async def _agather(uids: Sequence[int], *, seq: bool) -> tuple[list[str], dict[int, UserStatus]]:
    by_shard = _by_shard(uids)
    parts = split_by_node(sorted(by_shard))
    pipes = []
    for part in parts:
        pipe = aclient_for(part[0]).pipeline(transaction=False)
        _queue_node(pipe, part, by_shard, seq=seq)
        pipes.append(pipe)
    seqs, found = [], {}
    for part, replies in zip(
        parts, await asyncio.gather(*(p.execute() for p in pipes)), strict=True
    ):
        node_seqs, node_found = _read_node(replies, part, by_shard, seq=seq)
        seqs += node_seqs
        found.update(node_found)
    return seqs, found


async def ausers_status(uids: Sequence[int]) -> list[UserStatus]:
    """Async twin of :func:`users_status` (the HTTP API's reads run on the asyncio client)."""
    if not uids:
        return []
    _, found = await _agather(uids, seq=False)
    return [found[uid] for uid in uids]


async def awatch_snapshot(uids: Sequence[int]) -> tuple[str, list[UserStatus]]:
    """(log position, presence of each of ``uids``), read together: the watch list's reply.

    One round trip per node: each of the users' shards gives its newest log id with the
    users' states. The position returned is the OLDEST of those ids: the watch frames
    continue from it (presence/live/watches.py), so a change logged on one shard between
    the reads is sent again rather than lost (a repeated watch frame states what is true).
    """
    if not uids:
        k = keys(0)
        last = await aclient_for(0).xrevrange(k.events, "+", "-", count=1)
        return (str(last[0][0]) if last else "0-0"), []
    seqs, found = await _agather(uids, seq=True)
    return min(seqs, key=position), [found[uid] for uid in uids]


def user_rooms(uid: int) -> list[str]:
    """The rooms ``uid`` is in (any live connection of theirs), sorted: where-now.

    Two round trips whatever the number of connections and rooms: the live connections
    (``ZRANGEBYSCORE``, at most PRESENCE_MAX_CONNECTIONS_PER_USER), then one ``SUNION`` of
    their room sets (all on the user's shard).
    """
    k = keys(user_home(uid))
    client = client_for(k.shard)
    cids: Any = client.zrangebyscore(k.user_conns(uid), f"({now_ms()}", "+inf")
    if not cids:
        return []
    rooms: Any = client.sunion([k.conn_rooms(str(cid)) for cid in cids])
    return sorted(str(room) for room in rooms)


async def auser_rooms(uid: int) -> list[str]:
    """Async twin of :func:`user_rooms`."""
    k = keys(user_home(uid))
    client = aclient_for(k.shard)
    cids: Any = await client.zrangebyscore(k.user_conns(uid), f"({now_ms()}", "+inf")
    if not cids:
        return []
    rooms: Any = await client.sunion([k.conn_rooms(str(cid)) for cid in cids])  # type: ignore[misc]
    return sorted(str(room) for room in rooms)
