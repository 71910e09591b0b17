"""The store with its homes split (presence/store/shards.py): users, rooms and
addresses on their own shards of PRESENCE_SHARDS=64, on one Redis, on 3 independent
primaries and on a 3-primary Cluster.

- a heartbeat batch whose users and rooms lie on different shards is one round trip per
  node, counted on the wire (tests/support/wire.py: every write carrying the store's
  scripts; a pipeline packs all its commands into one);
- connect, join, heartbeat, status, re-assert and end keep every script on one slot (the
  Cluster refuses CROSSSLOT) and the counts exact;
- a process killed between the user half and the room half of an end leaves the rooms to
  the sweep: after it, each room's members and counts equal a model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pytest_django.fixtures import Settings

from presence import store
from presence.store import connections as connections_module
from presence.store import shards
from tests.support.cluster import ClusterTopology
from tests.support.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture
from tests.support.wire import ScriptTrips, counting_script_trips

pytestmark = pytest.mark.timeout(60)

# Users and rooms picked so that no room shares a shard with any user, and the rooms lie
# on several shards: every batch below crosses shards.
UIDS = [uid for uid in range(1, 200) if shards.user_shard(uid) % 2 == 0][:6]
ROOMS = [f"room{n}" for n in range(200) if shards.room_shard(f"room{n}") % 2 == 1][:4]


@pytest.fixture(autouse=True)
def sixty_four(settings: Settings) -> None:
    """64 shards (the default, pinned: UIDS and ROOMS above are picked for it)."""
    settings.PRESENCE_SHARDS = 64


@pytest.fixture
def round_trips() -> Iterator[ScriptTrips]:
    """Round trips carrying the store's scripts, per server port (tests/support/wire.py)."""
    with counting_script_trips() as trips:
        yield trips


async def connect_all(now: int) -> list[store.ConnRef]:
    """One connection per user, each in two rooms (on shards none of the users is on)."""
    refs = []
    for i, uid in enumerate(UIDS):
        cid = f"c{uid}"
        await store.connect(cid=cid, uid=uid, username=f"u{uid}", channel=f"ch{uid}", now=now)
        rooms = (ROOMS[i % len(ROOMS)], ROOMS[(i + 1) % len(ROOMS)])
        for room in rooms:
            assert await store.room_join(store.ConnRef(cid, uid), room, now=now) == 1
        refs.append(store.ConnRef(cid, uid, rooms))
    return refs


def model(refs: list[store.ConnRef]) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {room: set() for room in ROOMS}
    for ref in refs:
        for room in ref.rooms:
            members[room].add(str(ref.uid))
    return members


def room_members(client_of: Any, now: int) -> dict[str, set[str]]:
    """Each room's members with a live score, read on the room's shard."""
    out = {}
    for room in ROOMS:
        k = store.keys(store.room_home(room))
        out[room] = set(client_of(k.shard).zrangebyscore(k.room(room), f"({now}", "+inf"))
    return out


def test_the_homes_are_apart() -> None:
    user_shards = {store.user_home(uid) for uid in UIDS}
    room_shards = {store.room_home(room) for room in ROOMS}
    assert not user_shards & room_shards
    assert len(user_shards) > 1 and len(room_shards) > 1


class TestHeartbeatOnOneRedis:
    async def test_one_round_trip_for_users_and_rooms_of_many_shards(
        self, r: redis.Redis, round_trips: ScriptTrips
    ) -> None:
        now = store.now_ms()
        refs = await connect_all(now)
        await store.heartbeat_many(refs, now=now + 500)  # SCRIPT LOAD: once per server start
        r.config_resetstat()
        round_trips.by_port.clear()

        at = now // 1000 + 100  # later than the connect's activity (ZADD GT)
        answers = await store.heartbeat_many(refs, {"x": 1}, now=now + 1_000, active={UIDS[0]: at})

        assert answers == [store.HB_ALIVE] * len(refs)
        assert sum(round_trips.by_port.values()) == 1  # one node, one pipeline
        # One EVALSHA per shard touched (the users' and the rooms' sections), no other command.
        touched = {store.user_home(uid) for uid in UIDS} | {store.room_home(r) for r in ROOMS}
        stats = r.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == len(touched)
        exp = now + 1_000 + TTL_MS
        for ref in refs:
            k = store.keys(store.user_home(ref.uid))
            assert r.zscore(k.conns, ref.cid) == exp
            for room in ref.rooms:
                rk = store.keys(store.room_home(room))
                assert r.zscore(rk.room(room), str(ref.uid)) == exp
        assert r.zscore(store.keys(store.user_home(UIDS[0])).active, str(UIDS[0])) == at

    async def test_an_ended_membership_is_not_brought_back(self, r: redis.Redis) -> None:
        """The room section refreshes by connection id: once the end's room half took the
        cid out, a late batch that still carries the room changes nothing there."""
        now = store.now_ms()
        a, b = (await connect_all(now))[:2]
        await store.end_connections([a], now=now + 1)
        room = a.rooms[0]
        rk = store.keys(store.room_home(room))
        before = r.zscore(rk.room(room), str(a.uid))

        assert await store.heartbeat_many([a, b], now=now + 2_000) == [
            store.HB_ENDED,
            store.HB_ALIVE,
        ]
        assert r.zscore(rk.room(room), str(a.uid)) == before


class TestHeartbeatOnThreePrimaries:
    async def test_one_round_trip_per_node(
        self, settings: Settings, redis_shards: list[str], round_trips: ScriptTrips
    ) -> None:
        settings.PRESENCE_REDIS_SHARD_URLS = redis_shards
        store.reset_clients()
        try:
            now = store.now_ms()
            refs = await connect_all(now)
            await store.heartbeat_many(refs, now=now + 500)  # SCRIPT LOAD on each node, once
            round_trips.by_port.clear()

            assert await store.heartbeat_many(refs, now=now + 1_000) == [store.HB_ALIVE] * 6

            touched = {store.user_home(uid) for uid in UIDS} | {store.room_home(x) for x in ROOMS}
            nodes = {store.topology.node_of(shard) for shard in touched}
            ports = {int(redis_shards[node].rsplit(":", 1)[1].split("/")[0]) for node in nodes}
            assert dict(round_trips.by_port) == dict.fromkeys(ports, 1)
        finally:
            store.reset_clients()


class TestCrossShardLifecycle:
    async def test_counts_stay_exact_through_a_lifecycle(self, r: redis.Redis) -> None:
        now = store.now_ms()
        refs = await connect_all(now)
        assert room_members(store.client_for, now) == model(refs)
        await store.heartbeat_many(refs, now=now + 1_000)
        assert await store.set_status(UIDS[0], f"u{UIDS[0]}", "away", refs[0].rooms)
        # The status is logged on the user's shard (global) and on each room's shard.
        for room in refs[0].rooms:
            k = store.keys(store.room_home(room))
            last = r.xrevrange(k.events, "+", "-", count=1)[0][1]
            assert (last["k"], last["r"], last["s"]) == ("status", room, "away")

        ended = await store.end_connections(refs[:3], now=now + 2_000)

        assert [e.state for e in ended] == [1, 1, 1]
        assert all(e.global_left for e in ended)
        assert room_members(store.client_for, now + 2_000) == model(refs[3:])
        left = sorted(room for e in ended for room in e.rooms_left)
        expected = sorted(
            room
            for room, users in model(refs[:3]).items()
            for _ in users
            if not users & model(refs[3:])[room]
        )
        assert left == expected

    async def test_reassert_writes_back_rooms_on_their_shards(self, r: redis.Redis) -> None:
        now = store.now_ms()
        ref = (await connect_all(now))[0]
        r.flushall()  # the store lost everything; the socket is still open
        live = store.Liveness(ref, username="u", channel="ch")

        state, logged = await store.reassert(live, now=now + 1)

        assert state == 1
        assert logged == 1 + len(ref.rooms)  # the global join and one per room, x = '1'
        for room in ref.rooms:
            k = store.keys(store.room_home(room))
            assert r.smembers(k.room_user(room, ref.uid)) == {ref.cid}
            last = r.xrevrange(k.events, "+", "-", count=1)[0][1]
            assert (last["k"], last["r"], last["x"]) == ("join", room, "1")

    async def test_the_address_gate_counts_across_users_of_other_shards(
        self, r: redis.Redis
    ) -> None:
        gate = store.ConnectGate(max_per_address=2)
        now = store.now_ms()
        results = [
            await store.connect(
                cid=f"a{uid}", uid=uid, username="u", channel="c", ip="192.0.2.7", gate=gate
            )
            for uid in UIDS[:3]
        ]
        assert [res.refused for res in results] == ["", "", "too_many_from_address"]
        # An ended connection is pruned through its user's shard, when the set looks full
        # (and it passed the gate longer ago than a connect may take to register).
        await store.end_connections([store.ConnRef(f"a{UIDS[0]}", UIDS[0])])
        again = await store.connect(
            cid="again",
            uid=UIDS[3],
            username="u",
            channel="c",
            ip="192.0.2.7",
            gate=gate,
            now=now + store.address_pending_ms(),
        )
        assert again.refused == ""


class TestCrashBetweenHalves:
    async def test_the_sweep_repairs_an_end_killed_after_its_user_half(
        self, r: redis.Redis
    ) -> None:
        now = store.now_ms()
        refs = await connect_all(now)

        def killed(*args: Any, **kwargs: Any) -> Any:
            raise SystemExit("the process died between the halves")

        with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
            mp.setattr(connections_module, "_room_halves", killed)
            await store.end_connections(refs[:2], now=now + 1)
        # The user half ran: those users are gone; their rooms still list them.
        for ref in refs[:2]:
            assert r.zscore(store.keys(store.user_home(ref.uid)).users, str(ref.uid)) is None
        assert room_members(store.client_for, now + 1) == model(refs)
        # The sweep's repair of each shard, once the dead memberships are past the key grace;
        # the live connections heartbeat meanwhile.
        later = now + TTL_MS + GRACE_MS + 1_000
        await store.heartbeat_many(refs[2:], now=later - 1_000)

        repaired = sum(store.repair_rooms(shard, later) for shard in store.all_shards())

        assert room_members(store.client_for, later) == model(refs[2:])
        gone = {(room, uid) for room, uids in model(refs).items() for uid in uids}
        gone -= {(room, uid) for room, uids in model(refs[2:]).items() for uid in uids}
        assert repaired == len(gone)
        for room in ROOMS:
            k = store.keys(store.room_home(room))
            leaves = {(e["r"], e["u"]) for _, e in r.xrange(k.events) if e["k"] == "leave"}
            assert leaves == {(x, uid) for x, uid in gone if x == room}
        # A second run finds nothing: each leave is logged once.
        assert sum(store.repair_rooms(shard, later) for shard in store.all_shards()) == 0


class TestOnTheCluster:
    async def test_every_path_one_slot_per_script(
        self, settings: Settings, redis_cluster: ClusterTopology
    ) -> None:
        settings.PRESENCE_REDIS_CLUSTER_URL = redis_cluster.url
        store.reset_clients()
        try:
            now = store.now_ms()
            refs = await connect_all(now)
            assert await store.heartbeat_many(refs, {"x": 1}, now=now + 1) == [1] * len(refs)
            await store.set_status(UIDS[1], "u", "busy", refs[1].rooms)
            live = store.Liveness(refs[2], username="u", channel="c")
            assert (await store.reassert(live, now=now + 2))[0] == 2
            ended = await store.end_connections(refs, now=now + 3)
            assert [e.state for e in ended] == [1] * len(refs)
            assert room_members(store.client_for, now + 3) == {room: set() for room in ROOMS}
        finally:
            store.reset_clients()
