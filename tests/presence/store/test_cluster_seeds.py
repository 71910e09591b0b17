"""The Cluster clients of topology.py never run out of nodes to ask (redis/redis-py#3693).

redis-py drops a node from a cluster client's startup nodes at each connection error or
timeout on it, then closes every node's connections, which fails the commands in flight on
the other nodes, which drop theirs. Once none is left, redis-py's own client fails every
command until the process restarts. Seen in tests/e2e/test_shard_reshard.py on a busy
machine: one closed connection, then 2,000 handler errors in a row.

Each test brings a client into that state the way redis-py's error path does (the startup
nodes emptied, the client closed) against a real 3-primary Cluster, then uses it.
"""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from presence import store
from tests.support.cluster import ClusterTopology

pytestmark = pytest.mark.timeout(60)


def shard_keys() -> list[str]:
    """One key per logical shard: together they live on all 3 nodes."""
    return [store.keys(n).stats for n in store.all_shards()]


async def test_the_asyncio_client_finds_the_cluster_again(
    store_on_cluster: ClusterTopology,
) -> None:
    client = store.aclient_for(0)
    assert isinstance(client, AsyncRedisCluster)
    for key in shard_keys():
        await client.hincrby(key, "n", 1)

    client.nodes_manager.startup_nodes.clear()  # what redis-py's error path leaves
    await client.aclose()

    for key in shard_keys():
        assert await client.hincrby(key, "n", 1) == 2
    assert len(client.get_primaries()) == 3
    pipe = client.pipeline(transaction=False)
    for key in shard_keys():
        pipe.hget(key, "n")
    assert set(await pipe.execute()) == {"2"}


async def test_an_asyncio_pipeline_finds_the_cluster_again(
    store_on_cluster: ClusterTopology,
) -> None:
    client = store.aclient_for(0)
    await client.ping()

    client.nodes_manager.startup_nodes.clear()
    await client.aclose()

    pipe = client.pipeline(transaction=False)
    for key in shard_keys():
        pipe.hincrby(key, "n", 1)
    assert set(await pipe.execute()) == {1}


def test_the_sync_client_finds_the_cluster_again(store_on_cluster: ClusterTopology) -> None:
    """The sync client looks for the cluster again inside its error paths (a MOVED, a
    connection error), from its startup nodes: they are back by the next command."""
    client = store.client_for(0)
    assert isinstance(client, RedisCluster)
    for key in shard_keys():
        client.hincrby(key, "n", 1)

    client.nodes_manager.startup_nodes.clear()  # what redis-py's error path leaves

    for key in shard_keys():
        assert client.hincrby(key, "n", 1) == 2
    client.nodes_manager.initialize()  # what the next error path runs: it finds nodes again
    assert len(client.get_primaries()) == 3
