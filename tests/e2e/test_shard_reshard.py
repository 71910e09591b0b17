"""Slots move between the primaries of a Redis Cluster while 200 clients heartbeat and join.

A real uvicorn whose presence store is a 3-primary Cluster (``PRESENCE_REDIS_CLUSTER_URL``;
the channel layer and Celery stay on this run's private ``REDIS_URL``), 200 WebSocket
clients heartbeating every second and joining and leaving rooms all along, and
``redis-cli --cluster reshard`` moving a third of the slots three times round the nodes
(keys included, by MIGRATE: the clients meet MOVED and ASK). Issue 19's acceptance: no error
frame, no closed socket, and afterwards every room's members and counts, and the global
scope, equal the model (what the replies acknowledged), as the server lists them and as the
shards' keys hold them.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from presence.store.shards import all_shards, shard_slot
from tests.support.cluster import ClusterTopology
from tests.support.shard_swarm import (
    SWARM_ENV,
    FrameError,
    Member,
    RoomSwarm,
    assert_exact,
    mint_users,
    store_online,
    store_rooms,
)

# serial: the test allows no error frame while slots move, and a room join answers
# handler_timeout after 5 s. Beside the suite's other servers and browsers on CI's 2 cores,
# the reshard took 23.5 s instead of 4.6 and 25-38 joins timed out (two runs); alone it passes.
pytestmark = [
    pytest.mark.slow(seconds=20),
    pytest.mark.serial,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(400),
]

CLIENTS = int(os.environ.get("SHARD_E2E_CLIENTS", "200"))
ROOMS = [f"reshard-{i}" for i in range(24)]
INTERVAL, TTL = 1.0, 20.0
MOVES = [(0, 1, 3000), (1, 2, 3000), (2, 0, 3000)]  # (from node, to node, slots)


def shard_owners(cluster: ClusterTopology) -> dict[int, int]:
    """Logical shard -> port of the node serving its slot."""
    return {n: cluster.slot_owner(shard_slot(n)).port for n in all_shards()}


async def churn(swarm: RoomSwarm, stop: asyncio.Event, ops: list[int]) -> None:
    """Each client, over and over: join a random room or leave one of its rooms."""

    async def one(member: Member) -> None:
        rng = random.Random(member.uid)
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            try:
                if member.rooms and (len(member.rooms) >= 4 or rng.random() < 0.4):
                    await swarm.leave(member, rng.choice(sorted(member.rooms)))
                else:
                    await swarm.join(member, rng.choice(ROOMS))
            except FrameError:
                # Tallied (and asserted on) by the swarm. The model stays as acknowledged;
                # a join whose answer was an error is taken back by the server (protocol.md).
                continue
            ops[0] += 1

    await asyncio.gather(*(one(m) for m in swarm.members))


async def test_reshard_under_load_keeps_sockets_and_presence_exact(
    fresh_cluster: ClusterTopology, asgi_server: Any
) -> None:
    cluster = fresh_cluster
    env = {
        **SWARM_ENV,
        "PRESENCE_REDIS_CLUSTER_URL": cluster.url,
        "PRESENCE_HEARTBEAT_INTERVAL": str(INTERVAL),
        "PRESENCE_TTL": str(TTL),
    }
    server = asgi_server(env=env)
    tokens = await sync_to_async(mint_users)(CLIENTS, "reshard")
    swarm = RoomSwarm([server], tokens, INTERVAL)
    try:
        await swarm.connect()
        for m in swarm.members:
            await swarm.join(m, random.choice(ROOMS))
        before = shard_owners(cluster)

        stop, ops = asyncio.Event(), [0]
        load = asyncio.create_task(churn(swarm, stop, ops))
        await asyncio.sleep(3)
        started = time.monotonic()
        moved: set[int] = set()  # logical shards whose node changed in some move
        for source, target, slots in MOVES:
            await asyncio.to_thread(cluster.reshard, source, target, slots)
            assert not load.done(), load  # a closed socket ends the churn early
            now_owners = await asyncio.to_thread(shard_owners, cluster)
            moved.update(n for n in before if before[n] != now_owners[n])
            before = now_owners
        resharding = time.monotonic() - started
        await asyncio.sleep(3)
        stop.set()
        await asyncio.wait_for(load, 60)

        print(
            f"\nreshard: {len(MOVES)} moves of 3000 slots in {resharding:.1f} s, "
            f"{len(moved)}/{len(before)} logical shards moved, {ops[0]} joins/leaves, "
            f"{swarm.tally.acks} heartbeat acks, errors {dict(swarm.tally.errors)}, "
            f"closes {dict(swarm.tally.closes)} {swarm.tally.error_samples[:3]}"
        )
        assert moved, "no logical shard moved: the test proved nothing"
        assert not swarm.tally.closes, swarm.tally.closes
        assert len(swarm.open_members()) == CLIENTS

        # Exact afterwards: the server's listings and the shards' keys equal the model.
        expected = swarm.expected_rooms(ROOMS)
        observer = swarm.members[0]
        listed = {room: await swarm.list_scope(observer, room) for room in ROOMS}
        listed_all = await swarm.list_scope(observer, None)
        client = cluster.client()
        try:
            in_rooms = store_rooms(lambda n: client, ROOMS)
            online = store_online(lambda n: client)
        finally:
            client.close()
        assert not swarm.tally.errors, swarm.tally.error_samples
        assert_exact(expected, swarm.expected_online(), listed, listed_all, in_rooms, online)
    finally:
        await swarm.stop()
