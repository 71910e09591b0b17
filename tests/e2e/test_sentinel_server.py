"""A real uvicorn process with REDIS_URL in the Sentinel form: the store, the channel layer
and the broker all reach the primary through the sentinels, and follow it after the primary
is killed (kill -9) and the replica promoted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.support.e2e_clients import UserFactory, http, recv, request, token_for, ws
from tests.support.homes import user_keys
from tests.support.sentinel import SentinelTopology
from tests.support.servers import ASGIServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(90)]


async def test_a_server_on_sentinel_serves_sockets_and_follows_a_promoted_replica(
    asgi_server: Callable[..., ASGIServer],
    auser_factory: UserFactory,
    sentinel_topology: SentinelTopology,
) -> None:
    # CELERY_BROKER_URL unset: the broker follows REDIS_URL through the same sentinels.
    server = asgi_server(env={"REDIS_URL": sentinel_topology.url, "CELERY_BROKER_URL": ""})
    alice = await auser_factory("alice")
    async with ws(server, await token_for(server, alice)) as conn:
        assert (await recv(conn))["type"] == "hello"
        ack = await request(conn, {"type": "heartbeat", "id": 1})
        assert ack["type"] == "heartbeat.ack", ack
        # Presence was written on the primary the sentinels name (at alice's shard's keys).
        assert sentinel_topology.primary_client().exists(user_keys(alice.pk).conns)
    _status, body = await http("GET", server.url + "/readyz")
    assert body["checks"]["redis"]["ok"] and body["checks"]["channel_layer"]["ok"], body
    assert body["checks"]["broker"]["ok"], body

    replica = sentinel_topology.replica()
    await asyncio.to_thread(sentinel_topology.kill_primary)  # kill -9; waits for the promotion

    # A new socket (tokens are single-use; the used mark was replicated to the new primary).
    async with ws(server, await token_for(server, alice)) as conn:
        first = await recv(conn)
        assert first["type"] == "hello", (first, server.log()[-3000:])
        ack = await request(conn, {"type": "heartbeat", "id": 2})
        assert ack["type"] == "heartbeat.ack", ack
        assert replica.client().exists(user_keys(alice.pk).conns)
    _status, body = await http("GET", server.url + "/readyz")
    for name in ("redis", "channel_layer", "broker"):
        assert body["checks"][name]["ok"], body
