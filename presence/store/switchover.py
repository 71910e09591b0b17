"""Following a Sentinel switch-over at once: the ``+switch-master`` announcement.

A client pool from ``Sentinel.master_for`` asks the sentinels for the primary only when it
opens a connection. Its open connections stay on the old primary after a failover; with
``SENTINEL FAILOVER`` (planned) the old primary keeps accepting writes for about 10 s until
the sentinels demote it, and those writes are lost with the demotion (measured: closes of
that window were delivered to the hooks from the old primary, then swept again on the new
one). The sentinels announce the switch on their ``+switch-master`` channel
("<master name> <old ip> <old port> <new ip> <new port>"): :func:`await_switch` waits for it,
and :func:`drop_async_connections` makes this event loop's clients reconnect through the
sentinels, so writes go to the new primary within a moment of its promotion.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aredis

from presence.redis_url import RedisTarget
from presence.store.clients import async_sentinel_retry, live_async_clients

CHANNEL = "+switch-master"


async def await_switch(target: RedisTarget, host: str, port: int, listen: float) -> bool:
    """Listen on one sentinel for ``listen`` seconds: True when ``target``'s primary
    switched. Raises redis/OS errors when that sentinel is unreachable."""
    client = aredis.Redis(
        host=host,
        port=port,
        decode_responses=True,
        retry=async_sentinel_retry(),
        **target.sentinel_kwargs(socket_connect_timeout=2.0),
    )
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(CHANNEL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + listen
        while (left := deadline - loop.time()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None and message.get("type") == "message":
                words = str(message.get("data", "")).split()
                if words and words[0] == target.master_name:
                    return True
        return False
    finally:
        await pubsub.aclose()
        await client.aclose()


async def drop_async_connections() -> int:
    """Disconnect every connection of this loop's presence clients, in use or idle; the next
    command opens a new one on the current primary. Returns how many clients were reset."""
    clients = live_async_clients()
    for client in clients:
        await client.connection_pool.disconnect(inuse_connections=True)
    return len(clients)
