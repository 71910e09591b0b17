"""A web process is SIGKILLed in the middle of cross-shard joins and leaves.

Two real uvicorn processes whose presence store is 3 independent redis-servers
(``PRESENCE_REDIS_SHARD_URLS``; the channel layer and Celery on this run's private
``REDIS_URL``), a real Celery worker and beat sweeping every second, and clients that join
and leave, as fast as the replies come, rooms whose shard lives on another server than their
user's shard: each join and leave writes the user's shard and then the room's. One web
process is killed (SIGKILL of its process group: no disconnect handler runs) while its
clients' requests are on their way. After TTL and the sweep, issue 19's acceptance: every
room's members and counts equal the model (the killed server's clients gone, the others'
state exact), in the server's listings and in the rooms' keys on their shards, with no
lapsed member left behind in any room.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async

from presence.store.shards import jump_hash, room_shard, user_shard
from tests.support.shard_swarm import (
    SWARM_ENV,
    Member,
    RoomSwarm,
    assert_exact,
    clients_by_url,
    mint_users,
    store_online,
    store_rooms,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

CLIENTS = int(os.environ.get("SHARD_E2E_CLIENTS", "80"))
INTERVAL, TTL, SWEEP = 1.0, 5.0, 1.0
ROOM_POOL = [f"crash-{i}" for i in range(40)]


def node_of_shard(shard: int) -> int:
    return jump_hash(shard, 3)


def foreign_rooms(uid: int) -> list[str]:
    """The rooms whose shard is on another server than the user's shard."""
    mine = node_of_shard(user_shard(uid))
    return [r for r in ROOM_POOL if node_of_shard(room_shard(r)) != mine]


async def churn(swarm: RoomSwarm, stop: asyncio.Event, ops: list[int]) -> None:
    """Each client joins and leaves its foreign rooms back to back until ``stop``; a client
    whose server the test killed stops (its requests fail with the socket)."""

    async def one(member: Member) -> None:
        rng = random.Random(member.uid)
        rooms = foreign_rooms(member.uid)
        while not stop.is_set() and member.open:
            try:
                if member.rooms and (len(member.rooms) >= 5 or rng.random() < 0.45):
                    await swarm.leave(member, rng.choice(sorted(member.rooms)))
                else:
                    await swarm.join(member, rng.choice(rooms))
            except (ConnectionError, OSError, TimeoutError):
                if member.open:
                    raise
                return
            ops[0] += 1
            await asyncio.sleep(rng.uniform(0.0, 0.2))

    await asyncio.gather(*(one(m) for m in swarm.members))


async def test_web_process_killed_mid_cross_shard_joins(
    redis_shards: list[str], asgi_server: Any, celery_worker_process: Any
) -> None:
    env = {
        **SWARM_ENV,
        "PRESENCE_REDIS_SHARD_URLS": ",".join(redis_shards),
        "PRESENCE_HEARTBEAT_INTERVAL": str(INTERVAL),
        "PRESENCE_TTL": str(TTL),
        "PRESENCE_SWEEP_INTERVAL": str(SWEEP),
    }
    celery_worker_process(env=env, concurrency=1)
    celery_worker_process(env=env, beat=True)
    servers = [asgi_server(env=env), asgi_server(env=env)]
    tokens = await sync_to_async(mint_users)(CLIENTS, "crash")
    swarm = RoomSwarm(servers, tokens, INTERVAL)
    shard_clients = [redis.Redis.from_url(url, decode_responses=True) for url in redis_shards]
    client_of = clients_by_url(shard_clients)
    try:
        await swarm.connect()
        stop, ops = asyncio.Event(), [0]
        load = asyncio.create_task(churn(swarm, stop, ops))
        await asyncio.sleep(4)
        before_kill = ops[0]
        killed = swarm.forget_server(1)
        servers[1].kill()  # SIGKILL, mid-flight: no disconnect handler runs
        killed_at = time.monotonic()
        await asyncio.sleep(2)
        stop.set()
        await asyncio.wait_for(load, 60)
        survivors = swarm.open_members()
        in_flight = sum(1 for m in killed if m.rooms)

        # TTL and the sweep: wait until the shards hold the model (bounded), then compare.
        expected = swarm.expected_rooms(ROOM_POOL)
        deadline = killed_at + TTL + 30
        settled_after: float | None = None
        while time.monotonic() < deadline:
            whole = await asyncio.to_thread(store_rooms, client_of, ROOM_POOL, lapsed=True)
            online = await asyncio.to_thread(store_online, client_of)
            if whole == expected and online == swarm.expected_online():
                settled_after = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.5)
        observer = survivors[0]
        listed = {room: await swarm.list_scope(observer, room) for room in ROOM_POOL}
        listed_all = await swarm.list_scope(observer, None)
        in_rooms = store_rooms(client_of, ROOM_POOL)
        whole = store_rooms(client_of, ROOM_POOL, lapsed=True)
        online = store_online(client_of)
        print(
            f"\ncrash: {len(swarm.members)} clients, {len(killed)} killed with their server "
            f"({in_flight} of them in rooms), {before_kill} joins/leaves before the kill, "
            f"{ops[0]} in all, settled {settled_after} s after the kill, "
            f"errors {dict(swarm.tally.errors)}, closes {dict(swarm.tally.closes)}"
        )
        assert not swarm.tally.errors, swarm.tally.error_samples
        assert not swarm.tally.closes, swarm.tally.closes
        assert len(survivors) == CLIENTS - len(killed) and killed and before_kill > 0
        assert_exact(expected, swarm.expected_online(), listed, listed_all, in_rooms, online)
        lapsed = {r: whole[r] - expected[r] for r in ROOM_POOL if whole[r] != expected[r]}
        assert not lapsed, f"lapsed members the sweep left in rooms: {lapsed}"
        assert settled_after is not None
    finally:
        await swarm.stop()
        for c in shard_clients:
            c.close()
