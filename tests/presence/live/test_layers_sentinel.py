"""The channel layer on a real Sentinel topology: REDIS_URL in the Sentinel form becomes
channels-redis' Sentinel host, messages go through the primary, and after the primary is
killed the layer reaches the promoted replica."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis.exceptions import RedisError

from presence.live.layers import ResilientRedisChannelLayer
from presence.redis_url import channel_layer_host
from tests.support.sentinel import SentinelTopology

pytestmark = pytest.mark.slow


def layer_on(topology: SentinelTopology) -> ResilientRedisChannelLayer:
    """The layer as config/settings.py builds it from a Sentinel REDIS_URL."""
    host = channel_layer_host(topology.url_for_db(1), socket_connect_timeout=2)
    return ResilientRedisChannelLayer(hosts=[host], capacity=100, expiry=10)


async def send_until_ok(layer: ResilientRedisChannelLayer, channel: str, text: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            async with asyncio.timeout(2):
                await layer.send(channel, {"type": "test.message", "text": text})
            return
        except (RedisError, OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def wait_until_empty(client: redis.Redis, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while (size := await asyncio.to_thread(client.dbsize)) > 0:
        assert time.monotonic() < deadline, f"{size} keys left on the replica after {within} s"
        await asyncio.sleep(0.05)


async def test_send_and_receive_through_sentinel_and_after_the_primary_dies(
    sentinel_topology: SentinelTopology,
) -> None:
    layer = layer_on(sentinel_topology)
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "test.message", "text": "one"})
        # The message waits on the primary, in db 1 of the URL.
        assert sentinel_topology.primary().client(db=1).dbsize() > 0
        async with asyncio.timeout(5):
            assert (await layer.receive(channel))["text"] == "one"

        replica = sentinel_topology.replica()
        # channels-redis keeps a received message in a backup set until a task of its own
        # removes it; killed before the replica saw that removal, the promoted replica hands
        # "one" out again (at-least-once). Wait until the replica holds nothing of db 1.
        await wait_until_empty(replica.client(db=1))
        await asyncio.to_thread(sentinel_topology.kill_primary)

        # A receive waiting across the failover gets a message sent after it.
        waiting = asyncio.ensure_future(layer.receive(channel))
        await send_until_ok(layer, channel, "two")
        async with asyncio.timeout(10):
            assert (await waiting)["text"] == "two"
        assert replica.role() == "master"
    finally:
        await layer.flush()
        await layer.close_pools()
