"""The presence event log, one stream per logical shard (``Keys(shard).events``): positions,
reads over many shards, and snapshots taken at a position.

Each shard's scripts append to that shard's stream in the same call as the change
(lib/eventlog.lua), and each entry's ``p`` names the entry before it *in that stream*, so
positions and gaps are per shard. A room's events are all on the room's shard; a user's
global events (open, close, the global join/leave, status) on the user's shard.

Reading many shards (presence/live/eventlog.py follows every shard):

* on a node that is not a Cluster node (one Redis, or one of PRESENCE_REDIS_SHARD_URLS), one
  ``XREAD BLOCK`` names every stream of the shards on that node: one blocking connection per
  node per process, one call per ``block_ms`` when nothing happens;
* on a Cluster, a command's keys must share one slot and every shard is its own slot, so one
  XREAD cannot name two shards. :func:`read_logs` then sends one non-blocking XREAD per shard
  in one pipeline, which the cluster client splits into one round trip per node; the caller
  polls, backing off while the log is quiet (docs/performance.md has the idle cost of both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis.asyncio as aredis
from redis.crc import key_slot
from redis.exceptions import RedisError

from presence.loops import LoopLocal
from presence.protocol.types import PresenceUser
from presence.store import topology
from presence.store.clients import bounded, now_ms, on_reset
from presence.store.keys import Keys
from presence.store.reads import present_user

# Where a room's and a user's keys (and events) live: presence/store/shards.py, the one place
# the store's split moves them from shard 0 to room_shard / user_shard.
from presence.store.shards import all_shards, room_home, user_home

LogEntry = tuple[str, dict[str, str]]
# One entry of one shard's stream: (shard, id, fields).
ShardEntry = tuple[int, str, dict[str, str]]


def polled() -> bool:
    """Whether the log is read by polling (a Cluster: one XREAD cannot span two shards)."""
    return topology.shape() == "cluster"


def _node_groups(
    shards: Iterable[int], *, blocking: bool = False
) -> list[tuple[aredis.Redis, list[int]]]:
    """``shards`` grouped by this loop's client of the node holding them (topology.agroups)."""
    wanted = set(shards)
    out = []
    for client, part in topology.agroups(blocking=blocking):
        mine = [s for s in part if s in wanted]
        if mine:
            out.append((client, mine))
    return out


def follow_groups() -> list[tuple[aredis.Redis, list[int]]]:
    """The clients a log reader follows every shard with, each with its shards: one per node
    (its blocking client) on one Redis or shard URLs, one cluster client on a Cluster."""
    return _node_groups(all_shards(), blocking=True)


async def _gather(calls: Iterable[Any]) -> list[Any]:
    return list(await asyncio.gather(*calls))


async def log_positions(shards: Iterable[int] | None = None) -> dict[int, str]:
    """The id of the newest entry of each shard's stream ("0-0" when empty): where a reader
    starts. One pipeline per node."""
    wanted = list(all_shards() if shards is None else shards)

    async def per_node(client: aredis.Redis, part: list[int]) -> dict[int, str]:
        pipe = client.pipeline(transaction=False)
        for shard in part:
            pipe.xrevrange(Keys(shard).events, "+", "-", count=1)
        replies = await pipe.execute()
        return {s: str(r[0][0]) if r else "0-0" for s, r in zip(part, replies, strict=True)}

    out: dict[int, str] = {}
    for part in await _gather(per_node(c, p) for c, p in _node_groups(wanted)):
        out.update(part)
    return out


async def log_position(shard: int) -> str:
    """The id of the newest entry of one shard's stream ("0-0" when empty)."""
    return (await log_positions([shard]))[shard]


async def read_logs(
    client: aredis.Redis, after: Mapping[int, str], *, count: int, block_ms: int
) -> list[ShardEntry]:
    """Entries after each shard's position in ``after`` (shards on ``client``'s node), each
    shard's oldest first; at most ``count`` per shard.

    Not polled: one XREAD over every stream, waiting up to ``block_ms`` when all are quiet.
    Polled (Cluster): one non-blocking XREAD per shard in one pipeline (one round trip per
    node); returns at once, the caller waits between empty polls.
    """
    streams = {Keys(shard).events: shard for shard in after}
    if polled():
        async with bounded():
            return await _poll_cluster(client, after, count)
    async with bounded(block_ms / 1000):
        reply = await client.xread(
            {stream: after[shard] for stream, shard in streams.items()},
            count=count,
            block=block_ms,
        )
    # decode_responses: [[stream, [(id, {field: value}), ...]], ...]
    return [
        (streams[stream], str(eid), fields)
        for stream, entries in reply or ()
        for eid, fields in entries
    ]


# ------------------------------------------------------------------------------ Cluster polls
# WARNING: the idle cost of a Cluster reader. redis-py's cluster pipeline spends about 7 ms of
# Python per 64 commands (measured here); plain pipelines straight to each primary, 1.5 ms.
# A poll therefore sends each primary's shards' XREADs on a plain client of that primary
# (slot owners from the cluster client's map), and only what was redirected (a slot moved:
# MOVED/ASK, a node gone) goes through the cluster client, which follows redirects, after
# which the map is read again.
_primaries: LoopLocal[dict[str, Any]] = LoopLocal(lambda loop: {})
on_reset(_primaries.clear)


@lru_cache(maxsize=4096)
def _slot(key: str) -> int:
    """A key's Cluster slot (cached: the same few streams are polled many times a second)."""
    return key_slot(key.encode())


def _primary_client(node: Any) -> aredis.Redis:
    """This loop's plain client of a Cluster primary (the cluster client's own options)."""
    clients = _primaries.get()
    client = clients.get(node.name)
    if client is None:
        kwargs = {k: v for k, v in node.connection_kwargs.items() if k != "event_dispatcher"}
        pool = aredis.ConnectionPool(connection_class=node.connection_class, **kwargs)
        client = clients[node.name] = aredis.Redis(connection_pool=pool)
    return client


async def cluster_round(
    client: Any,
    shards: Iterable[int],
    queue: Callable[[Any, int], object],
) -> dict[int, Any]:
    """One command per shard of a Cluster in one round trip per primary: ``queue(pipe,
    shard)`` adds shard's command to a pipeline (or runs it on the cluster client, for a
    shard that was redirected). Returns shard -> reply."""
    if not client.nodes_manager.slots_cache:
        await client.initialize()
    by_node: dict[str, tuple[Any, list[int]]] = {}
    for shard in shards:
        node = client.nodes_manager.get_node_from_slot(_slot(Keys(shard).events))
        by_node.setdefault(node.name, (node, []))[1].append(shard)

    async def per_node(node: Any, part: list[int]) -> list[tuple[int, Any]]:
        pipe = _primary_client(node).pipeline(transaction=False)
        for shard in part:
            queue(pipe, shard)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:  # the node is gone: every shard redirected
            replies = [exc] * len(part)
        return list(zip(part, replies, strict=True))

    out: dict[int, Any] = {}
    redirected: list[int] = []
    for part in await _gather(per_node(node, shards) for node, shards in by_node.values()):
        for shard, reply in part:
            if isinstance(reply, BaseException) and not _is_nogroup(reply):
                redirected.append(shard)
            else:
                out[shard] = reply
    if redirected:
        # The cluster client follows MOVED and ASK (one shard at a time: rare).
        pipe = client.pipeline()
        for shard in redirected:
            queue(pipe, shard)
        for shard, reply in zip(redirected, await pipe.execute(raise_on_error=False), strict=True):
            out[shard] = reply
        await client.nodes_manager.initialize()  # the slot map changed: read it again
        _primaries.get().clear()
    return out


def _is_nogroup(exc: BaseException) -> bool:
    return str(exc).startswith("NOGROUP")


async def _poll_cluster(client: Any, after: Mapping[int, str], count: int) -> list[ShardEntry]:
    def queue(pipe: Any, shard: int) -> None:
        pipe.xread({Keys(shard).events: after[shard]}, count=count)

    out: list[ShardEntry] = []
    for shard, reply in (await cluster_round(client, after, queue)).items():
        if isinstance(reply, BaseException):
            raise reply
        out += [(shard, str(eid), fields) for _, entries in reply or () for eid, fields in entries]
    return out


# ------------------------------------------------------------------------------ snapshots
@dataclass
class Snapshot:
    """Who is in a scope (room None = everyone online) at the stream positions ``positions``.

    A room's snapshot is at one position, its shard's (``seq``). The global scope's is at a
    position of every shard; its ``seq`` is what the reader that asked numbered it
    (presence/live/eventlog.py: the global scope's positions are the reader's own).
    """

    room: str | None
    seq: str
    count: int
    users: list[PresenceUser]
    complete: bool
    positions: dict[int, str] = field(default_factory=dict)


def _index(k: Keys, room: str | None) -> str:
    return k.room(room) if room else k.users


def _queue_listing(pipe: Any, index: str, now: int, limit: int) -> None:
    low = f"({now}"
    pipe.zcount(index, low, "+inf")
    pipe.zrangebyscore(index, low, "+inf", start=0, num=limit)


async def _read_scopes(
    rooms: Sequence[str | None], *, limit: int
) -> tuple[dict[int, str], list[tuple[int, list[tuple[int, str]]]]]:
    """Each scope's (count, uids up to ``limit``) and the positions they are consistent with.

    Per node, one pipeline: each shard's stream position is read before its part of each
    scope. Not on a Cluster, the pipeline is a MULTI (nothing is logged in between); on a
    Cluster (no MULTI across slots) it is ordered: a change logged between the two reads is
    in the listing and after the position, so a client gets its event once more, which a diff
    (each user's final state) applies harmlessly; nothing is ever missed.
    """
    now = now_ms()
    shards_of = [list(all_shards()) if room is None else [room_home(room)] for room in rooms]
    involved = sorted({s for group in shards_of for s in group})
    transaction = not polled()

    async def per_node(client: aredis.Redis, part: list[int]) -> list[tuple[int, Any]]:
        pipe: Any = client.pipeline(transaction=transaction)
        queued: list[tuple[int, int]] = []  # (shard, scope index or -1 for the position)
        for shard in part:
            k = Keys(shard)
            pipe.xrevrange(k.events, "+", "-", count=1)
            queued.append((shard, -1))
            for i, room in enumerate(rooms):
                if shard in shards_of[i]:
                    _queue_listing(pipe, _index(k, room), now, limit)
                    queued.append((shard, i))
        raw = await pipe.execute()
        out: list[tuple[int, Any]] = []
        at = 0
        for shard, i in queued:
            if i == -1:
                out.append((shard, ("pos", raw[at])))
                at += 1
            else:
                out.append((shard, (i, int(raw[at]), list(raw[at + 1]))))
                at += 2
        return out

    positions: dict[int, str] = {}
    counts = [0] * len(rooms)
    found: list[list[tuple[int, str]]] = [[] for _ in rooms]
    for node in await _gather(per_node(c, p) for c, p in _node_groups(involved)):
        for shard, item in node:
            if item[0] == "pos":
                positions[shard] = str(item[1][0][0]) if item[1] else "0-0"
            else:
                i, count, members = item
                counts[i] += count
                # A user listed by a shard's ``users`` index has their keys on that shard;
                # a room's members have theirs on their own (user) shards.
                found[i] += [
                    (shard if rooms[i] is None else user_home(uid), str(uid)) for uid in members
                ]
    # A global scope reads up to ``limit`` per shard: keep ``limit`` in all.
    return positions, [(counts[i], found[i][:limit]) for i in range(len(rooms))]


async def snapshots(rooms: Sequence[str | None], *, limit: int) -> list[Snapshot]:
    """Members of each scope and the stream positions they are consistent with; the names
    and statuses in a second round trip (a name or status read there may already be newer,
    which the later events then repeat harmlessly). ``seq`` of a global snapshot is ""
    (the reader numbers it)."""
    positions, listed = await _read_scopes(rooms, limit=limit)
    out = []
    for room, (count, found) in zip(rooms, listed, strict=True):
        users = await _details(found)
        uids = found
        seq = positions[room_home(room)] if room is not None else ""
        scope_positions = {room_home(room): seq} if room is not None else dict(positions)
        out.append(Snapshot(room, seq, count, users, len(uids) >= count, scope_positions))
    return out


@dataclass
class Members:
    """A room's member ids at its shard's log position ``seq``, without their names."""

    seq: str
    shard: int  # the room's shard: ``seq`` is a position of its stream
    count: int  # members online, all of them (``uids`` may stop at the limit)
    uids: list[str]


async def members(room: str, *, limit: int) -> Members:
    """The ids in a room at one position of its shard's stream: one MULTI of three commands
    on the room's shard (one slot).

    WARNING: on the room.join path. Its cost does not grow with the room: the names and
    statuses come from the process's replica (presence/live/replica.py).
    """
    shard, now = room_home(room), now_ms()
    k = Keys(shard)
    pipe = topology.aclient_for(shard).pipeline(transaction=not polled())
    pipe.xrevrange(k.events, "+", "-", count=1)
    _queue_listing(pipe, k.room(room), now, limit)
    last, count, uids = await pipe.execute()
    seq = str(last[0][0]) if last else "0-0"
    return Members(seq, shard, int(count), [str(uid) for uid in uids])


async def aonline_count() -> int:
    """Users online anywhere: the sum of every shard's count (one pipeline per node)."""
    now = now_ms()

    async def per_node(client: aredis.Redis, part: list[int]) -> int:
        pipe = client.pipeline(transaction=False)
        for shard in part:
            pipe.zcount(Keys(shard).users, f"({now}", "+inf")
        return sum(int(n) for n in await pipe.execute())

    return sum(await _gather(per_node(c, p) for c, p in _node_groups(all_shards())))


async def adetails(uids: Sequence[str]) -> list[PresenceUser]:
    """Names, statuses and connection counts of ``uids`` (two commands each, on each user's
    shard, one pipeline per node); lapsed users left out, the order kept."""
    return await _details([(user_home(uid), uid) for uid in uids])


async def _details(found: Sequence[tuple[int, str]]) -> list[PresenceUser]:
    """:func:`adetails` of (shard holding the user's keys, uid) pairs."""
    if not found:
        return []
    now = now_ms()
    by_shard: dict[int, list[str]] = {}
    for shard, uid in found:
        by_shard.setdefault(shard, []).append(uid)
    uids = [uid for _, uid in found]

    async def per_node(client: aredis.Redis, part: list[int]) -> dict[str, Any]:
        pipe: Any = client.pipeline(transaction=False)
        order: list[str] = []
        for shard in part:
            k = Keys(shard)
            for uid in by_shard[shard]:
                # "held": the user's leave is held for the grace window (end.lua): present.
                pipe.hmget(k.user(uid), "username", "status", "held")
                pipe.zcount(k.user_conns(uid), f"({now}", "+inf")
                order.append(uid)
        raw = await pipe.execute()
        return {uid: (raw[2 * i], raw[2 * i + 1]) for i, uid in enumerate(order)}

    got: dict[str, Any] = {}
    for part in await _gather(per_node(c, p) for c, p in _node_groups(by_shard)):
        got.update(part)
    listed = (present_user(uid, got[uid][0], got[uid][1], now) for uid in uids)
    return [user for user in listed if user is not None]
