"""Reads for the operator console: a fixed number of round trips per page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presence.store.clients import now_ms
from presence.store.jobs import score_ms
from presence.store.keys import keys
from presence.store.log import LogEntry
from presence.store.reads import plan_index
from presence.store.topology import client_for, groups

# operator console (presence.console): reads for the admin pages, a fixed number of
# round trips per page whatever its rows. Each step is one MULTI pipeline: a consistent
# snapshot of what it reads, and one unit the tests count (tests/presence/console/test_console_*).
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
    """(live members, page) of the users index (or a room's), most recent heartbeat first.

    One round trip: ZCOUNT and ZREVRANGE by rank. Live members have the highest scores, so
    ranks ``0 .. live-1`` are exactly them: any page costs O(log N + count), page 2,000 as
    little as page 1. The order follows heartbeats, so it shifts between two reads.
    """
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    index, now = plan_index(room), now_ms()
    pipe = client.pipeline(transaction=True)
    pipe.zcount(index, f"({now}", "+inf")
    if count > 0:  # a stop of -1 would be "to the end"
        pipe.zrevrange(index, start, start + count - 1, withscores=True)
    total, *rest = pipe.execute()
    members = rest[0] if rest else []
    page = [(int(uid), score_ms(score)) for uid, score in members if score_ms(score) > now]
    return int(total), page


def console_live_scores(room: str | None, uids: Sequence[int]) -> dict[int, int]:
    """Which of ``uids`` are online (in ``room``): uid -> latest expiry. One ZMSCORE."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    if not uids:
        return {}
    now = now_ms()
    scores: Any = client.zmscore(plan_index(room), [str(uid) for uid in uids])
    return {
        uid: score_ms(score)
        for uid, score in zip(uids, scores, strict=True)
        if score is not None and score_ms(score) > now
    }


def console_statuses(uids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """uid -> (username, status) from the users' hashes; one pipeline."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    if not uids:
        return {}
    k = keys()
    pipe = client.pipeline(transaction=True)
    for uid in uids:
        pipe.hmget(k.user(uid), ["username", "status"])
    return {
        uid: (username or "", status or "online")
        for uid, (username, status) in zip(uids, pipe.execute(), strict=True)
    }


def console_users(members: Sequence[tuple[int, int]]) -> list[ConsoleUser]:
    """Details of the listed (uid, expiry) members: two round trips for any number of rows.

    The first pipeline reads each user's hash, live connection count and newest connections;
    the second each of those connections' hash and rooms. Users whose last connection
    lapsed between the reads are left out.
    """
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    if not members:
        return []
    k, now = keys(), now_ms()
    low = f"({now}"
    pipe = client.pipeline(transaction=True)
    for uid, _ in members:
        pipe.hmget(k.user(uid), ["username", "status"])
        pipe.zcount(k.user_conns(uid), low, "+inf")
        pipe.zrevrangebyscore(
            k.user_conns(uid), "+inf", low, start=0, num=CONSOLE_CONNS_PER_USER, withscores=True
        )
    pipe.zmscore(k.active, [str(uid) for uid, _ in members])  # in the same MULTI
    first = pipe.execute()
    active = first[-1]
    cids = [str(cid) for i in range(len(members)) for cid, _ in first[3 * i + 2]]
    pipe = client.pipeline(transaction=True)
    for cid in cids:
        pipe.hmget(k.conn(cid), ["at", "channel"])
        pipe.smembers(k.conn_rooms(cid))
    second = pipe.execute() if cids else []
    details = {
        cid: (second[2 * i], second[2 * i + 1]) for i, cid in enumerate(cids)
    }  # cid -> ((at, channel), rooms)
    users = []
    for i, (uid, expiry) in enumerate(members):
        (username, status), count, conns = first[3 * i], first[3 * i + 1], first[3 * i + 2]
        if int(count) == 0:
            continue
        listed = []
        for cid, score in conns:
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
                last_active=int(active[i]) if active[i] is not None else None,
            )
        )
    return users


def console_connection(cid: str) -> tuple[int | None, str]:
    """(uid, channel) of a live connection; (None, "") when presence does not know it."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    uid, channel = client.hmget(keys().conn(cid), ["uid", "channel"])  # type: ignore[misc]
    return (int(uid) if uid is not None else None), str(channel or "")


def console_recent_events(count: int) -> list[LogEntry]:
    """The newest ``count`` entries of the event log, newest first (one XREVRANGE)."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    raw: Any = client.xrevrange(keys().events, "+", "-", count=count)
    return [(str(eid), dict(fields)) for eid, fields in raw]


def console_overview(tasks: Sequence[str]) -> ConsoleOverview:
    """Users and connections online and unflushed counters (summed over every shard), and the
    last runs of ``tasks``: one pipeline per node."""
    now = now_ms()
    users = conns = 0
    stats: dict[str, int] = {}
    runs: list[Any] = []
    for client, shards in groups():
        pipe = client.pipeline(transaction=False)
        for shard in shards:
            k = keys(shard)
            pipe.zcount(k.users, f"({now}", "+inf")
            pipe.zcount(k.conns, f"({now}", "+inf")
            pipe.hgetall(k.stats)
        if 0 in shards:
            for task in tasks:
                pipe.hgetall(keys(0).task_last(task))
        result = pipe.execute()
        for at in range(0, 3 * len(shards), 3):
            users += int(result[at])
            conns += int(result[at + 1])
            for name, value in result[at + 2].items():
                # peaks are per shard: the largest, not a sum (a lower bound of the total peak)
                if name.startswith("peak_"):
                    stats[name] = max(stats.get(name, 0), int(value))
                else:
                    stats[name] = stats.get(name, 0) + int(value)
        runs += result[3 * len(shards) :]
    return ConsoleOverview(
        users=users,
        connections=conns,
        live_stats=stats,
        task_runs={task: dict(run) for task, run in zip(tasks, runs, strict=True)},
    )
