"""A new asyncio Cluster client routes its very first commands by slot.

redis-py 7.4 chooses a command's routing before it initializes the client: with no default
node yet, a keyed command is routed as keyless, to a random node. A web process's first
commands (connects in flight) then met MOVED, and several at once made the client close and
rebuild its nodes under the commands in flight, which failed ("Connection closed by
server": the store_shards bench on 3 primaries, 16 connects in flight).
presence/store/topology.py initializes the client before its first command.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from presence import store
from tests.support.cluster import ClusterTopology

pytestmark = pytest.mark.timeout(60)

IN_FLIGHT = 32


def moved_replies(cluster: ClusterTopology) -> int:
    """MOVED errors all nodes have answered since they started."""
    total = 0
    for url in cluster.urls:
        stats = redis.Redis.from_url(url).info("errorstats")
        total += int(stats.get("errorstat_MOVED", {}).get("count", 0))
    return total


async def test_concurrent_first_commands_go_to_their_slots_node(
    store_on_cluster: ClusterTopology,
) -> None:
    before = moved_replies(store_on_cluster)

    results = await asyncio.gather(
        *(
            store.connect(cid=str(uuid.uuid4()), uid=n, username=f"u{n}", channel=f"c.{n}")
            for n in range(1, IN_FLIGHT + 1)
        )
    )

    assert all(r.joined and not r.refused for r in results)
    assert moved_replies(store_on_cluster) == before
