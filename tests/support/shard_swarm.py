"""WebSocket clients that heartbeat, join and leave rooms, with a model of who is where.

The shard end-to-end tests (tests/e2e/test_shard_*.py) and the chaos suite's shard scenario
drive real uvicorn processes with a ``RoomSwarm``: one user per client, each heartbeating
every ``interval`` seconds on its own task, and joining/leaving rooms through real
``room.join``/``room.leave`` frames whose replies are awaited. Every error frame and every
close the test did not ask for is tallied. The *model* is what the replies acknowledged: a
client's ``rooms`` change only when the server answered. ``expected_rooms`` turns it into
the members every room must have; ``list_scope`` asks a server (``presence.list``, paging
with ``cursor`` across shards) what it has; ``store_rooms``/``store_online`` read the shards'
Redis keys directly (``Keys(room_shard(room)).room(room)``), for the same comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from presence import store
from presence.store.keys import Keys
from presence.store.shards import jump_hash, room_shard, shard_count
from tests.support.servers import ASGIServer


class FrameError(Exception):
    """The server answered a request with an error frame."""


@dataclass
class Member:
    """One client: its user, the server it is on, its socket and the rooms it is in."""

    uid: int
    server: int
    conn: ClientConnection
    rooms: set[str] = field(default_factory=set)  # acknowledged by the server
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_id: int = 0
    closed_code: int | None = None
    closing: bool = False  # closed by the test (or its server killed by the test)

    @property
    def open(self) -> bool:
        return self.closed_code is None and not self.closing


@dataclass
class Tally:
    acks: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    error_samples: list[dict[str, Any]] = field(default_factory=list)


async def open_client(server: ASGIServer, token: str, **options: Any) -> ClientConnection:
    """A real WebSocket client of ``server`` with ``token``, past its hello (``options``:
    more of websockets' ``connect`` arguments). The swarms here and in chaos.py use it."""
    conn = await connect(
        f"{server.ws_url}/ws/presence/?token={token}",
        origin=server.url,  # type: ignore[arg-type]
        compression=None,
        proxy=None,
        open_timeout=30,
        close_timeout=2,
        **options,
    )
    hello = json.loads(await asyncio.wait_for(conn.recv(), 30))
    assert hello["type"] == "hello", hello
    return conn


async def connect_in_batches(
    tokens: list[tuple[int, str]],
    batch: int,
    connect_one: Callable[[int, int, str], Awaitable[None]],
) -> None:
    """``connect_one(i, uid, token)`` for every token, ``batch`` at a time (a crowd of
    handshakes at once times out on the 2-core machines)."""
    for start in range(0, len(tokens), batch):
        chunk = tokens[start : start + batch]
        await asyncio.gather(*(connect_one(start + i, uid, t) for i, (uid, t) in enumerate(chunk)))


class RoomSwarm:
    """Clients spread over ``servers`` (client i on server i % len)."""

    def __init__(
        self, servers: list[ASGIServer], tokens: list[tuple[int, str]], interval: float
    ) -> None:
        self.servers, self.tokens, self.interval = servers, tokens, interval
        self.members: list[Member] = []
        self.tally = Tally()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ connecting
    async def connect(self, batch: int = 25) -> None:
        """Connect every client (``batch`` at a time), each past its hello."""
        await connect_in_batches(self.tokens, batch, self._connect)

    async def _connect(self, i: int, uid: int, token: str) -> None:
        conn = await open_client(self.servers[i % len(self.servers)], token, max_size=None)
        member = Member(uid, i % len(self.servers), conn)
        self.members.append(member)
        self._tasks.append(asyncio.create_task(self._read(member)))
        self._tasks.append(asyncio.create_task(self._beat(member)))

    async def _read(self, member: Member) -> None:
        try:
            async for raw in member.conn:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "heartbeat.ack":
                    self.tally.acks += 1
                elif kind == "error":
                    self.tally.errors[frame.get("code", "?")] += 1
                    if len(self.tally.error_samples) < 10:
                        self.tally.error_samples.append(frame)
                    waiter = member.pending.pop(frame.get("id"), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_exception(FrameError(json.dumps(frame)))
                elif kind == "reply":
                    waiter = member.pending.pop(frame.get("id"), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(frame.get("data") or {})
        except ConnectionClosed:
            pass
        finally:
            for waiter in member.pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("socket closed"))
            member.pending.clear()
            if not member.closing:
                code = member.conn.close_code
                member.closed_code = code if code is not None else 1006
                self.tally.closes[member.closed_code] += 1

    async def _beat(self, member: Member) -> None:
        await asyncio.sleep(random.uniform(0, self.interval))
        while member.open:
            with contextlib.suppress(ConnectionClosed):
                await member.conn.send(json.dumps({"type": "heartbeat"}))
            await asyncio.sleep(self.interval)

    # ------------------------------------------------------------------ requests
    async def request(
        self, member: Member, kind: str, data: dict[str, Any], within: float = 30
    ) -> dict[str, Any]:
        """Send one frame and wait for its reply's data (FrameError on an error frame)."""
        member.next_id += 1
        rid = member.next_id
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        member.pending[rid] = waiter
        await member.conn.send(json.dumps({"type": kind, "id": rid, "data": data}))
        return await asyncio.wait_for(waiter, within)

    async def join(self, member: Member, room: str) -> None:
        await self.request(member, "room.join", {"room": room})
        member.rooms.add(room)

    async def leave(self, member: Member, room: str) -> None:
        await self.request(member, "room.leave", {"room": room})
        member.rooms.discard(room)

    async def list_scope(self, member: Member, room: str | None) -> tuple[set[int], int]:
        """(ids listed, count) of a scope, paging ``presence.list`` with cursors to the end."""
        ids: set[int] = set()
        cursor: str | None = "0"
        count = -1
        while cursor is not None:
            data: dict[str, Any] = {"cursor": cursor, "limit": 100}
            if room is not None:
                data["room"] = room
            reply = await self.request(member, "presence.list", data)
            ids.update(int(u["id"]) for u in reply["users"])
            count = int(reply["count"])
            cursor = reply.get("cursor")
        return ids, count

    # ------------------------------------------------------------------ the model
    def open_members(self) -> list[Member]:
        return [m for m in self.members if m.open]

    def expected_rooms(self, rooms: Iterable[str]) -> dict[str, set[int]]:
        """Each room's members by the model: the users of open clients that joined it."""
        expected: dict[str, set[int]] = {room: set() for room in rooms}
        for m in self.open_members():
            for room in m.rooms:
                expected.setdefault(room, set()).add(m.uid)
        return expected

    def expected_online(self) -> set[int]:
        return {m.uid for m in self.open_members()}

    def forget_server(self, index: int) -> list[Member]:
        """The test killed server ``index``: its clients' closes are expected, not counted."""
        gone = [m for m in self.members if m.server == index]
        for m in gone:
            m.closing = True
        return gone

    async def stop(self) -> None:
        for m in self.members:
            m.closing = True
        await asyncio.gather(*(m.conn.close() for m in self.members), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ---------------------------------------------------------------------- the store itself
ShardClient = Callable[[int], Any]  # redis.Redis or redis.RedisCluster


def clients_by_url(clients: list[redis.Redis]) -> ShardClient:
    """Shard n's client among independent primaries (PRESENCE_REDIS_SHARD_URLS order)."""
    return lambda shard: clients[jump_hash(shard, len(clients))]


def store_rooms(
    client_of: ShardClient, rooms: Iterable[str], *, lapsed: bool = False
) -> dict[str, set[int]]:
    """Each room's live members as its shard's Redis holds them (scores in the future);
    ``lapsed``: every member the room's set holds, lapsed or not (what the sweep repairs)."""
    low = "-inf" if lapsed else f"({store.now_ms()}"
    found: dict[str, set[int]] = {}
    for room in rooms:
        shard = room_shard(room)
        raw = client_of(shard).zrangebyscore(Keys(shard).room(room), low, "+inf")
        found[room] = {int(u) for u in raw}
    return found


def store_online(client_of: ShardClient) -> set[int]:
    """The users every shard lists online now (the union of the shards' ``users`` indexes)."""
    now = store.now_ms()
    online: set[int] = set()
    for shard in range(shard_count()):
        raw = client_of(shard).zrangebyscore(Keys(shard).users, f"({now}", "+inf")
        online.update(int(u) for u in raw)
    return online


def mint_users(n: int, prefix: str) -> list[tuple[int, str]]:
    """``n`` new users (one bulk insert) and a WebSocket token for each: [(uid, token)]."""
    import time

    from django.contrib.auth import get_user_model

    from presence.access.auth import mint_token

    user_model = get_user_model()
    stamp = int(time.time() * 1000)
    users = user_model.objects.bulk_create(
        [user_model(username=f"{prefix}-{stamp}-{i}", password="!") for i in range(n)]
    )
    return [(u.pk, mint_token(u)) for u in users]


# Environment of web processes that take a swarm from one loopback address.
SWARM_ENV = {
    # A swarm client lists every room of the pool back to back after the fault (41 requests
    # in the crash test): past the default bucket (20/s, burst 40) the server drops a frame
    # and answers with one id-less rate_limited notice, so the request waited forever on
    # a fast machine. The tests measure the store, not the frame limiter.
    "PRESENCE_RATE_LIMIT": "1000",
    "PRESENCE_RATE_BURST": "1000",
    "PRESENCE_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "PRESENCE_ADDRESS_CONNECT_RATE": "100000",
    "PRESENCE_ADDRESS_CONNECT_BURST": "100000",
}


def assert_exact(
    expected: dict[str, set[int]],
    expected_online: set[int],
    listed: dict[str, tuple[set[int], int]],
    listed_all: tuple[set[int], int],
    in_rooms: dict[str, set[int]] | None,
    online: set[int],
) -> None:
    """Every room's listing (members and count) and its shard's keys (``in_rooms``; None:
    not compared) equal the model, and so does the global scope; one assertion naming every
    difference."""
    problems: list[str] = []
    for room, members in sorted(expected.items()):
        ids, count = listed[room]
        if ids != members or count != len(members):
            problems.append(
                f"{room} listed: {len(ids)} ids (count {count}), model {len(members)}; "
                f"missing {sorted(members - ids)[:5]}, ghosts {sorted(ids - members)[:5]}"
            )
        if in_rooms is not None and in_rooms[room] != members:
            problems.append(
                f"{room} on its shard: {len(in_rooms[room])}, model {len(members)}; missing "
                f"{sorted(members - in_rooms[room])[:5]}, ghosts "
                f"{sorted(in_rooms[room] - members)[:5]}"
            )
    ids, count = listed_all
    if ids != expected_online or count != len(expected_online):
        problems.append(
            f"global listed: {len(ids)} ids (count {count}), model {len(expected_online)}"
        )
    if online != expected_online:
        problems.append(
            f"global on the shards: {len(online)}, model {len(expected_online)}; missing "
            f"{sorted(expected_online - online)[:5]}, ghosts {sorted(online - expected_online)[:5]}"
        )
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)
