"""Reads for the operator console: a fixed number of round trips per page."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from presence.conf import app_settings
from presence.redis_url import redacted
from presence.store import shards
from presence.store.clients import client_options, get_redis, now_ms
from presence.store.jobs import score_ms
from presence.store.keys import keys
from presence.store.log import LogEntry
from presence.store.processes import read_task_runs
from presence.store.reads import fan_out, pick_ranges, queue_live_counts
from presence.store.shards import all_shards
from presence.store.topology import aclient_for, client_for, groups, node_of, shape, split_by_node

# operator console (presence.console): reads for the admin pages, a fixed number of
# round trips per page whatever its rows. Each step is one MULTI pipeline: a consistent
# snapshot of what it reads, and one unit the tests count (tests/presence/console/test_console_*).


def _snapshot(items: Sequence[Any], shard_of: Any, queue: Any) -> list[Any]:
    # One MULTI per node per step (a consistent read of each node, one unit the tests count).
    return fan_out(items, shard_of, queue, snapshot=True)


# Connections listed per user row; the row's connection count stays exact.
CONSOLE_CONNS_PER_USER = 20


@dataclass(frozen=True)
class ConsoleConnection:
    """One live connection as the console shows it."""

    cid: str
    channel: str
    connected_ms: int | None  # None when its hash is gone (lapsed, not swept yet)
    expiry_ms: int
    rooms: tuple[str, ...]


@dataclass(frozen=True)
class ConsoleUser:
    """One online user with (up to CONSOLE_CONNS_PER_USER of) their live connections."""

    uid: int
    username: str
    status: str
    expiry_ms: int  # latest expiry of any of their connections (in the listed scope)
    connection_count: int
    connections: tuple[ConsoleConnection, ...]
    last_active: int | None = None  # Unix s of the last connect or activity frame

    @property
    def rooms(self) -> list[str]:
        return sorted({room for c in self.connections for room in c.rooms})

    @property
    def connected_ms(self) -> int | None:
        """When the oldest listed connection opened."""
        times = [c.connected_ms for c in self.connections if c.connected_ms is not None]
        return min(times) if times else None


@dataclass(frozen=True)
class ConsoleOverview:
    """What the dashboard reads from Redis, in one round trip."""

    users: int
    connections: int
    live_stats: dict[str, int]  # counters not flushed yet ({P}:stats)
    task_runs: dict[str, dict[str, str]]  # task -> its metrics hash ({P}:<task>:last)


def console_index_page(
    room: str | None, start: int, count: int
) -> tuple[int, list[tuple[int, int]]]:
    """(live members, page) of everyone online (or of a room), by rank.

    Everyone: every shard's ``users`` index laid end to end in shard order, each most recent
    heartbeat first; two steps of one pipeline per node (every shard's ZCOUNT; ZREVRANGE by
    rank of the shards that hold ranks ``start .. start + count``). Live members have the
    highest scores, so a shard's ranks ``0 .. live-1`` are exactly them: any page costs
    O(log N + count). A room: one round trip on the room's shard. The order follows
    heartbeats, so it shifts between two reads.
    """
    now = now_ms()
    if room:
        home = shards.room_home(room)
        pipe = client_for(home).pipeline(transaction=True)
        pipe.zcount(keys(home).room(room), f"({now}", "+inf")
        if count > 0:  # a stop of -1 would be "to the end"
            pipe.zrevrange(keys(home).room(room), start, start + count - 1, withscores=True)
        total, *rest = pipe.execute()
        members = rest[0] if rest else []
    else:
        every = list(all_shards())
        counts = [
            int(c)
            for (c,) in _snapshot(
                every,
                lambda s: s,
                lambda p, part: [p.zcount(keys(s).users, f"({now}", "+inf") for s in part],
            )
        ]
        total = sum(counts)
        ranges = pick_ranges(counts, start, count) if count > 0 else []
        steps = _snapshot(
            ranges,
            lambda r: r[0],
            lambda p, part: [
                p.zrevrange(keys(s).users, skip, skip + take - 1, withscores=True)
                for s, skip, take in part
            ],
        )
        members = [member for (step,) in steps for member in step]
    page = [(int(uid), score_ms(score)) for uid, score in members if score_ms(score) > now]
    return int(total), page


def console_live_scores(room: str | None, uids: Sequence[int]) -> dict[int, int]:
    """Which of ``uids`` are online (in ``room``): uid -> latest expiry. One ZMSCORE on the
    room's shard, or one ZSCORE per user on their shard's index (one pipeline per node)."""
    if not uids:
        return {}
    now = now_ms()
    if room:
        home = shards.room_home(room)
        scores: Any = client_for(home).zmscore(keys(home).room(room), [str(uid) for uid in uids])
    else:
        found = _snapshot(
            uids,
            shards.user_home,
            lambda p, part: [p.zscore(keys(shards.user_home(u)).users, str(u)) for u in part],
        )
        scores = [score for (score,) in found]
    return {
        uid: score_ms(score)
        for uid, score in zip(uids, scores, strict=True)
        if score is not None and score_ms(score) > now
    }


def console_statuses(uids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """uid -> (username, status) from the users' hashes on their shards; one pipeline per
    node."""
    if not uids:
        return {}
    found = _snapshot(
        uids,
        shards.user_home,
        lambda p, part: [
            p.hmget(keys(shards.user_home(u)).user(u), ["username", "status"]) for u in part
        ],
    )
    return {
        uid: (username or "", status or "online")
        for uid, [(username, status)] in zip(uids, found, strict=True)
    }


def _queue_user(pipe: Any, uids: Sequence[int], low: str) -> None:
    for uid in uids:
        k = keys(shards.user_home(uid))
        pipe.hmget(k.user(uid), ["username", "status"])
        pipe.zcount(k.user_conns(uid), low, "+inf")
        pipe.zrevrangebyscore(
            k.user_conns(uid), "+inf", low, start=0, num=CONSOLE_CONNS_PER_USER, withscores=True
        )
        pipe.zscore(k.active, str(uid))


def _queue_conn(pipe: Any, conns: Sequence[tuple[int, str]]) -> None:
    # A connection's keys live on its user's shard.
    for shard, cid in conns:
        pipe.hmget(keys(shard).conn(cid), ["at", "channel"])
        pipe.smembers(keys(shard).conn_rooms(cid))


def console_users(members: Sequence[tuple[int, int]]) -> list[ConsoleUser]:
    """Details of the listed (uid, expiry) members: two steps of one pipeline per node for
    any number of rows.

    The first reads each user's hash, live connection count, newest connections and last
    activity on the user's shard; the second each of those connections' hash and rooms.
    Users whose last connection lapsed between the reads are left out.
    """
    if not members:
        return []
    low = f"({now_ms()}"
    uids = [uid for uid, _ in members]
    first = _snapshot(uids, shards.user_home, lambda p, part: _queue_user(p, part, low))
    conns = [
        (shards.user_home(uid), str(cid))
        for uid, answer in zip(uids, first, strict=True)
        for cid, _ in answer[2]
    ]
    second = _snapshot(conns, lambda c: c[0], _queue_conn)
    details = {cid: (answer[0], answer[1]) for (_, cid), answer in zip(conns, second, strict=True)}
    users = []
    for (uid, expiry), ((username, status), count, listed_conns, active) in zip(
        members, first, strict=True
    ):
        if int(count) == 0:
            continue
        listed = []
        for cid, score in listed_conns:
            (at, channel), rooms = details[str(cid)]
            listed.append(
                ConsoleConnection(
                    cid=str(cid),
                    channel=channel or "",
                    connected_ms=int(at) if at is not None else None,
                    expiry_ms=score_ms(score),
                    rooms=tuple(sorted(rooms)),
                )
            )
        users.append(
            ConsoleUser(
                uid=uid,
                username=username or "",
                status=status or "online",
                expiry_ms=expiry,
                connection_count=int(count),
                connections=tuple(listed),
                last_active=int(float(active)) if active is not None else None,
            )
        )
    return users


def console_connection(cid: str) -> tuple[int | None, str]:
    """(uid, channel) of a live connection; (None, "") when presence does not know it.

    A connection id does not name its user's shard: every shard is asked, one pipeline per
    node (an operator's single lookup, not a hot path)."""
    every = list(all_shards())
    found = _snapshot(
        every,
        lambda s: s,
        lambda p, part: [p.hmget(keys(s).conn(cid), ["uid", "channel"]) for s in part],
    )
    for [(uid, channel)] in found:
        if uid is not None:
            return int(uid), str(channel or "")
    return None, ""


def _entry_order(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def console_recent_events(count: int) -> list[LogEntry]:
    """The newest ``count`` entries of every shard's event log, newest first: one XREVRANGE
    per shard (one pipeline per node), merged by entry id (each id starts with its ms)."""
    every = list(all_shards())
    found = _snapshot(
        every,
        lambda s: s,
        lambda p, part: [p.xrevrange(keys(s).events, "+", "-", count=count) for s in part],
    )
    entries = [(str(eid), dict(fields)) for (raw,) in found for eid, fields in raw]
    entries.sort(key=lambda entry: _entry_order(entry[0]), reverse=True)
    return entries[:count]


def console_overview(tasks: Sequence[str]) -> ConsoleOverview:
    """Users and connections online and unflushed counters (summed over every shard), and the
    last runs of ``tasks``: one pipeline per node.

    The runs are read where periodic tasks record them (REDIS_URL's client, as
    presence.jobs.periodic and ``read_task_runs``), in the same pipeline when that is a node
    of the store (one Redis), else in one more round trip. ``peak_*`` fields are per shard
    (connect.lua and heartbeat.lua keep their shard's peak): the largest is reported, a lower
    bound of the global peak; the minute buckets also hold the flush's sampled global counts
    (docs/console.md, "Peaks").
    """
    now = now_ms()
    users = conns = 0
    stats: dict[str, int] = {}
    task_runs: dict[str, dict[str, str]] | None = None
    recorder = get_redis()
    for client, part in groups():
        pipe = client.pipeline(transaction=False)
        for shard in part:
            queue_live_counts(pipe, shard, now)
            pipe.hgetall(keys(shard).stats)
        with_runs = client is recorder and task_runs is None
        if with_runs:
            for task in tasks:
                pipe.hgetall(keys(0).task_last(task))
        result = pipe.execute()
        for at in range(0, 3 * len(part), 3):
            users += int(result[at])
            conns += int(result[at + 1])
            for name, value in result[at + 2].items():
                if name.startswith("peak_"):
                    stats[name] = max(stats.get(name, 0), int(value))
                else:
                    stats[name] = stats.get(name, 0) + int(value)
        if with_runs:
            tail = result[3 * len(part) :]
            task_runs = {task: dict(run) for task, run in zip(tasks, tail, strict=True)}
    if task_runs is None:
        task_runs = read_task_runs(recorder, tasks)
    return ConsoleOverview(users=users, connections=conns, live_stats=stats, task_runs=task_runs)


# --------------------------------------------------------------------------- node health
async def _aping(client: aredis.Redis, within: float) -> str:
    try:
        # redis-py 7 types ping() for the sync and asyncio clients at once.
        await asyncio.wait_for(cast(Awaitable[bool], client.ping()), within)
    except TimeoutError:
        return f"timed out after {within:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return ""


async def _aping_cluster_nodes(url: str, within: float) -> dict[str, str]:
    # The shared cluster client knows the nodes (its slot map); each is PINGed on a client
    # of its own, closed after: a PING cut by the timeout never leaves a half-read reply on
    # a pooled connection that store calls use.
    cluster = cast(AsyncRedisCluster, aclient_for(0))
    try:
        await asyncio.wait_for(cluster.initialize(), within)
    except Exception as exc:
        return {redacted(url): f"{type(exc).__name__}: {exc}"[:200] or "unreachable"}
    options = client_options(for_asyncio=True)
    target = urlsplit(url)
    out: dict[str, str] = {}

    async def one(host: str, port: int | str) -> None:
        netloc = target.netloc.rpartition("@")
        node_url = target._replace(netloc=f"{netloc[0]}{netloc[1]}{host}:{port}").geturl()
        client = aredis.Redis.from_url(node_url, **options)
        try:
            out[f"{host}:{port}"] = await _aping(client, within)
        finally:
            await client.aclose()

    await asyncio.gather(*(one(n.host, n.port) for n in cluster.get_primaries()))
    return out


async def aping_store_nodes(within: float) -> dict[str, str]:
    """Every node of the presence store -> "" if it answered PING within ``within`` seconds,
    else why not: each shard URL (PRESENCE_REDIS_SHARD_URLS, password hidden), or each
    primary of the Cluster. Concurrent. One Redis (REDIS_URL): {} (the caller pings it)."""
    kind = shape()
    if kind == "cluster":
        return await _aping_cluster_nodes(str(app_settings.REDIS_CLUSTER_URL), within)
    if kind != "shards":
        return {}
    urls = app_settings.REDIS_SHARD_URLS
    parts = split_by_node(list(all_shards()))
    labels = [redacted(urls[node_of(part[0])]) for part in parts]
    errors = await asyncio.gather(*(_aping(aclient_for(part[0]), within) for part in parts))
    return dict(zip(labels, errors, strict=True))
