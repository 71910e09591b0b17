"""room.join under load (issue 18 item 3): a reply whose Redis cost does not grow with the
room, and an idempotent join.

Commands are counted with the private Redis's ``INFO commandstats`` (every command a script
runs counts too), less the process's background readers' blocking reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from config.embedded_redis import RedisServer
from presence import store
from presence.handlers import registry
from tests.support.eventlog import logged
from tests.support.homes import room_keys

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]

# The log reader's, session writer's and process registry's own work, not the join's.
BACKGROUND = ("cmdstat_xread", "cmdstat_xreadgroup", "cmdstat_xautoclaim", "cmdstat_xack")


def lobby_key() -> str:
    """The lobby's members, on the lobby's shard."""
    return room_keys("lobby").room("lobby")


async def seed_room(room: str, members: int, *, first_uid: int) -> None:
    """``members`` users online, each with one connection in ``room`` (through the scripts)."""
    for uid in range(first_uid, first_uid + members):
        cid = str(uuid.uuid4())
        await store.connect(cid=cid, uid=uid, username=f"user{uid}", channel="ch")
        await store.room_join(store.ConnRef(cid, uid, ()), room)


def commands(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(v["calls"]) for name, v in stats.items() if name not in BACKGROUND)


async def join_cost(r: redis.Redis, client: Any, room: str, id_: int) -> tuple[int, Any]:
    r.config_resetstat()
    reply = await client.request("room.join", {"room": room}, id_=id_)
    cost = commands(r) - 1  # less the INFO itself
    return cost, reply


@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_join_costs_the_same_commands_in_a_room_of_10_and_of_2000(
    ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis, protocol: int
) -> None:
    await seed_room("small", 10, first_uid=100_000)
    await seed_room("big", 2000, first_uid=200_000)
    subprotocols = ["presence.v2"] if protocol == 2 else None
    warm = await ws_client(await auser_factory("warm"), subprotocols=subprotocols)
    await warm.request("room.join", {"room": "warmup"}, id_=1)  # the replica is built

    costs: dict[str, list[int]] = {"small": [], "big": []}
    for i in range(3):
        for room in ("small", "big"):
            client = await ws_client(await auser_factory(f"{room}{i}"), subprotocols=subprotocols)
            cost, reply = await join_cost(r, client, room, id_=10 + i)
            assert reply["type"] == "reply", reply
            size = 10 + i + 1 if room == "small" else 2000 + i + 1  # earlier joiners stay
            assert reply["data"]["count"] == size
            listed = len(reply["data"]["users"])
            assert listed == (size if protocol == 2 or size < 1000 else 1000)
            costs[room].append(cost)

    small, big = sum(costs["small"]) / 3, sum(costs["big"]) / 3
    assert abs(big - small) <= 0.2 * small, costs  # it was 4,038 against 30
    assert big < 40, costs


def busy(server: RedisServer, ms: int) -> threading.Thread:
    """Occupy the server with one script for ``ms`` ms, from a thread (returns at once)."""
    script = (
        "local s = redis.call('TIME') repeat local n = redis.call('TIME') "
        "until (n[1] - s[1]) * 1000 + (n[2] - s[2]) / 1000 >= tonumber(ARGV[1]) return 1"
    )
    client = redis.Redis.from_url(server.url)
    thread = threading.Thread(target=client.eval, args=(script, 0, ms), daemon=True)
    thread.start()
    time.sleep(0.05)
    return thread


@pytest.mark.parametrize("protocol", [1, 2])
async def test_a_timed_out_join_is_answered_as_joined_on_retry_with_one_join_event(
    ws_client: WSFactory,
    auser_factory: UserFactory,
    r: redis.Redis,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    protocol: int,
) -> None:
    alice = await auser_factory("alice")
    client = await ws_client(alice, subprotocols=["presence.v2"] if protocol == 2 else None)
    spec = registry.get("room.join")
    assert spec is not None
    monkeypatch.setitem(registry._handlers, "room.join", dataclasses.replace(spec, timeout=0.3))

    blocker = busy(redis_server, 1000)  # the join's script waits behind it
    first = await client.request("room.join", {"room": "lobby"}, id_=1)
    assert (first["type"], first.get("code")) == ("error", "handler_timeout")
    await asyncio.to_thread(blocker.join)

    # The write went through after the timeout; the retry is answered as joined.
    retry = await client.request("room.join", {"room": "lobby"}, id_=2)
    assert retry["type"] == "reply", retry
    assert [u["id"] for u in retry["data"]["users"]] == [alice.pk]
    assert r.zscore(lobby_key(), str(alice.pk)) is not None
    joins = [e for e in logged(r) if e["k"] == "join" and e.get("r") == "lobby"]
    assert len(joins) == 1
    # Leaving takes the user out: the connection knew it was in the room.
    assert (await client.request("room.leave", {"room": "lobby"}, id_=3))["type"] == "reply"
    assert r.zscore(lobby_key(), str(alice.pk)) is None


async def test_a_timed_out_join_that_landed_is_the_connections_own(
    ws_client: WSFactory,
    auser_factory: UserFactory,
    r: redis.Redis,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a retry: the connection adopted the join, so its close takes the user out
    of the room (a join it did not know of stayed behind as a ghost member)."""
    alice = await auser_factory("alice")
    client = await ws_client(alice)
    spec = registry.get("room.join")
    assert spec is not None
    monkeypatch.setitem(registry._handlers, "room.join", dataclasses.replace(spec, timeout=0.3))
    blocker = busy(redis_server, 1000)
    first = await client.request("room.join", {"room": "lobby"}, id_=1)
    assert first.get("code") == "handler_timeout"
    await asyncio.to_thread(blocker.join)
    await asyncio.sleep(0.2)
    assert r.zscore(lobby_key(), str(alice.pk)) is not None

    await client.close()

    assert r.zscore(lobby_key(), str(alice.pk)) is None
    leaves = [e for e in logged(r) if e["k"] == "leave" and e.get("r") == "lobby"]
    assert len(leaves) == 1


async def test_a_retry_while_the_join_is_on_its_way_waits_for_it(
    ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis, redis_server: RedisServer
) -> None:
    alice = await auser_factory("alice")
    client = await ws_client(alice)
    blocker = busy(redis_server, 500)
    await client.send({"type": "room.join", "id": 1, "data": {"room": "lobby"}})
    await client.send({"type": "room.join", "id": 2, "data": {"room": "lobby"}})
    replies = [
        await client.recv_until(lambda f, i=i: f.get("id") == i and f["type"] != "presence")
        for i in (1, 2)
    ]
    await asyncio.to_thread(blocker.join)
    assert [reply["type"] for reply in replies] == ["reply", "reply"]
    joins = [e for e in logged(r) if e["k"] == "join" and e.get("r") == "lobby"]
    assert len(joins) == 1
