"""A Redis failover under connected sockets: none is closed, every heartbeat is acked.

The store is a real Sentinel topology (tests/support/sentinel.py: primary, replica, three
sentinels) and ``REDIS_URL`` its Sentinel form; the sockets are in-process WebSocket clients
through the full ASGI stack, heartbeating every few hundred milliseconds while the primary
fails over (planned), is killed (-9) or paused. Counted per scenario: error frames and closes
(goal 0), the longest wait for a heartbeat's ack, and whether every user is listed on the
new primary within one heartbeat interval of the end of the fault.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from presence import store
from tests.support.homes import room_keys, user_keys
from tests.support.sentinel import SentinelTopology
from tests.support.ws import WSClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

WSFactory = Callable[..., Awaitable[WSClient]]
UserFactory = Callable[..., Awaitable[Any]]

CLIENTS = 12
BEAT = 0.4  # seconds between one client's heartbeats: many are in flight during the fault


@pytest.fixture
def on_sentinel(sentinel_topology: SentinelTopology, settings: Settings) -> Iterator[None]:
    settings.REDIS_URL = sentinel_topology.url
    settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 1.0
    settings.PRESENCE_TTL = 60.0
    store.reset_clients()
    yield
    store.reset_clients()


@dataclass
class Tally:
    """What the clients saw while the fault ran."""

    acks: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    closes: list[int] = field(default_factory=list)
    longest_wait: float = 0.0


async def beat(client: WSClient, tally: Tally, stop: asyncio.Event) -> None:
    """Heartbeat until ``stop``, one at a time, recording each ack's wait."""
    n = 0
    while not stop.is_set():
        n += 1
        sent = time.monotonic()
        await client.send({"type": "heartbeat", "id": n})
        while True:
            out = await client.comm.receive_output(timeout=60)
            if out["type"] == "websocket.close":
                tally.closes.append(out.get("code", 0))
                return
            frame = json.loads(out["text"])
            if frame["type"] == "error":
                tally.errors.append(frame)
                break
            if frame.get("id") == n:
                tally.acks += 1
                tally.longest_wait = max(tally.longest_wait, time.monotonic() - sent)
                break
        await asyncio.sleep(BEAT)


async def under_fault(
    clients: list[WSClient], fault: Callable[[], object], settle: float = 2.0
) -> Tally:
    tally, stop = Tally(), asyncio.Event()
    beaters = [asyncio.create_task(beat(c, tally, stop)) for c in clients]
    await asyncio.sleep(1.0)
    await asyncio.to_thread(fault)
    await asyncio.sleep(settle)  # past the fault: every client heartbeats a few more times
    stop.set()
    await asyncio.wait_for(asyncio.gather(*beaters), timeout=60)
    return tally


async def connected(
    ws_client: WSFactory, auser_factory: UserFactory
) -> tuple[list[WSClient], list[int]]:
    users = [await auser_factory(f"u{i}") for i in range(CLIENTS)]
    clients = [await ws_client(u) for u in users]
    for c in clients:
        await c.request("room.join", {"room": "lobby"}, id_="j")
    return clients, [u.pk for u in users]


def listed(topology: SentinelTopology, uids: list[int]) -> list[int]:
    """The users the current primary lists online in the global scope (on each user's
    shard) and in the lobby (on the lobby's shard)."""
    r = topology.primary_client()
    lobby, now = room_keys("lobby").room("lobby"), store.now_ms()
    return [
        uid
        for uid in uids
        if float(r.zscore(user_keys(uid).users, str(uid)) or 0) > now
        and float(r.zscore(lobby, str(uid)) or 0) > now
    ]


class TestFailover:
    async def test_a_planned_failover_costs_no_socket(
        self,
        on_sentinel: None,
        sentinel_topology: SentinelTopology,
        ws_client: WSFactory,
        auser_factory: UserFactory,
    ) -> None:
        clients, uids = await connected(ws_client, auser_factory)

        tally = await under_fault(clients, sentinel_topology.failover)

        assert tally.closes == [] and tally.errors == [], tally
        assert tally.acks > CLIENTS * 3
        assert listed(sentinel_topology, uids) == uids

    async def test_a_killed_primary_costs_no_socket(
        self,
        on_sentinel: None,
        sentinel_topology: SentinelTopology,
        ws_client: WSFactory,
        auser_factory: UserFactory,
    ) -> None:
        clients, uids = await connected(ws_client, auser_factory)

        tally = await under_fault(clients, sentinel_topology.kill_primary)

        assert tally.closes == [] and tally.errors == [], tally
        assert tally.longest_wait < 20, tally  # held, within PRESENCE_HEARTBEAT_HOLD
        assert listed(sentinel_topology, uids) == uids

    async def test_a_primary_paused_10s_costs_no_socket(
        self,
        on_sentinel: None,
        sentinel_topology: SentinelTopology,
        ws_client: WSFactory,
        auser_factory: UserFactory,
    ) -> None:
        clients, uids = await connected(ws_client, auser_factory)

        tally = await under_fault(clients, lambda: sentinel_topology.pause_primary(10))

        assert tally.closes == [] and tally.errors == [], tally
        assert listed(sentinel_topology, uids) == uids


class TestSwitchOver:
    async def test_writes_follow_the_new_primary_before_the_old_one_is_demoted(
        self,
        on_sentinel: None,
        sentinel_topology: SentinelTopology,
        ws_client: WSFactory,
        auser_factory: UserFactory,
    ) -> None:
        """Without the +switch-master watcher the pool's open connections kept writing to the
        old primary (still accepting writes for ~10 s) and those writes were lost."""
        first = await ws_client(await auser_factory("first"))  # opens this loop's pool
        old = sentinel_topology.primary()

        new_address = await asyncio.to_thread(sentinel_topology.failover, wait_demoted=False)
        await asyncio.sleep(0.5)  # the watcher hears +switch-master and drops the pool
        assert old.role() == "master"  # not demoted yet: it would still take writes
        late = await ws_client(await auser_factory("late"))
        assert await first.request("heartbeat", id_="hb") == {"type": "heartbeat.ack", "id": "hb"}

        new = sentinel_topology.node_at(new_address).client()
        k = user_keys(late.hello["user"]["id"])  # a connection's keys are on its user's shard
        assert new.hexists(k.conn(late.hello["session_id"]), "uid")
        assert not old.client().hexists(k.conn(late.hello["session_id"]), "uid")
