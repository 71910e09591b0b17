"""Every Lua script against a real Redis Cluster of 3 primaries: one slot per call.

The store runs on the Cluster client (PRESENCE_REDIS_CLUSTER_URL, topology.py), and each
script is driven through its store function, so the keys are the ones production builds.
redis-py's cluster client refuses an EVALSHA whose keys span slots before sending it, and
the Cluster itself answers CROSSSLOT: a script touching two slots fails here. Every call's
keys are recorded too and must map to one slot (redis.crc.key_slot, the Cluster's own
function), and every script's header must declare its KEYS under one anchor (``{P}`` or
``{S}``), read statically from the files. The last scenario test checks that every file of
presence/store/lua/ ran.

Also the shapes themselves: the cluster client of topology.py reaches all 3 nodes, and the
shard tags put shards on every node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings
from redis.crc import key_slot

from presence import store
from presence.store import scripts as scripts_module
from presence.store.scripts import LUA_DIR, LuaScript, ScriptCall
from tests.support.cluster import ClusterTopology

RAN: set[str] = set()
# (script, the slots of its keys) for every call made on the Cluster in this module.
CALLS: list[tuple[str, set[int]]] = []


def record(script_name: str, keys: Sequence[str]) -> None:
    RAN.add(script_name)
    CALLS.append((script_name, {key_slot(str(key).encode()) for key in keys}))


@pytest.fixture
def on_cluster(redis_cluster: ClusterTopology, settings: Settings) -> Iterator[None]:
    """The presence store on the Cluster; the names of the scripts run are recorded."""
    settings.PRESENCE_REDIS_CLUSTER_URL = redis_cluster.url
    store.reset_clients()
    run, arun = LuaScript.run, LuaScript.arun

    def recording_run(self: LuaScript, client: object, keys: Sequence[str], args: object) -> object:
        record(self.name, keys)
        return run(self, client, keys, args)  # type: ignore[arg-type]

    async def recording_arun(
        self: LuaScript, client: object, keys: Sequence[str], args: object
    ) -> object:
        record(self.name, keys)
        return await arun(self, client, keys, args)  # type: ignore[arg-type]

    queue_calls = scripts_module._queue_calls

    def recording_queue(pipe: object, calls: Sequence[ScriptCall], which: Sequence[int]) -> None:
        for i in which:  # the per-node pipelines of run_many
            record(calls[i][0].name, calls[i][1])
        queue_calls(pipe, calls, which)

    mp = pytest.MonkeyPatch()
    mp.setattr(LuaScript, "run", recording_run)
    mp.setattr(LuaScript, "arun", recording_arun)
    mp.setattr(scripts_module, "_queue_calls", recording_queue)
    yield
    mp.undo()
    store.reset_clients()


def test_the_store_is_a_cluster_client(on_cluster: None, redis_cluster: ClusterTopology) -> None:
    from redis.cluster import RedisCluster

    client = store.client_for(0)
    assert isinstance(client, RedisCluster)
    assert store.shape() == "cluster"
    assert len(client.get_primaries()) == 3
    # 64 shard tags over 3 equal slot ranges: every node holds some shards.
    owners = {client.get_node_from_key(store.keys(n).conns).port for n in range(64)}
    assert owners == {node.port for node in redis_cluster.nodes}


async def test_connection_lifecycle_scripts(on_cluster: None) -> None:
    now = store.now_ms()
    conn = store.ConnRef("c1", 7)
    gate = store.ConnectGate(max_per_user=5, max_per_address=5, address_rate=10, address_burst=5)
    result = await store.connect(
        cid="c1", uid=7, username="u7", channel="ch", ip="10.0.0.1", now=now, gate=gate
    )
    assert result.joined and result.status == "online"
    assert await store.room_join(conn, "lobby", now=now) == 1
    assert await store.heartbeat_many([store.ConnRef("c1", 7, ("lobby",))], {"x": 1}) == [
        store.HB_ALIVE
    ]
    assert await store.set_status(7, "u7", "away", ["lobby"]) == {"lobby"}
    assert await store.publish("lobby", '{"type":"x"}')
    assert await store.room_leave(conn, "lobby") is True
    live = store.Liveness(store.ConnRef("c1", 7), username="u7", channel="ch")
    assert (await store.reassert(live))[0] == 2
    # Rooms on other shards than the user's: the room halves of re-assert and end.
    rooms = ("lobby", "hall", "den")
    assert await store.room_join(conn, "hall", now=now) == 1
    relive = store.Liveness(store.ConnRef("c1", 7, rooms), username="u7", channel="ch")
    assert (await store.reassert(relive))[0] == 2
    [ended] = await store.end_connections([store.ConnRef("c1", 7, rooms)], reason="closed")
    assert ended.state == 1 and ended.global_left
    assert sorted(ended.rooms_left) == ["den", "hall", "lobby"]


async def test_held_leaves_release(on_cluster: None, settings: Settings) -> None:
    settings.PRESENCE_LEAVE_GRACE = 5.0
    now = store.now_ms()
    await store.connect(cid="c2", uid=8, username="u8", channel="ch", now=now)
    [ended] = await store.end_connections([store.ConnRef("c2", 8)], now=now)
    assert ended.held
    assert await store.arelease_due(now=now + 10_000, shards=[store.user_home(8)]) == (1, 1)
    await store.connect(cid="c3", uid=9, username="u9", channel="ch", now=now)
    await store.end_connections([store.ConnRef("c3", 9)], now=now)
    assert store.release_user(9, now=now) == 1
    # A room's hold (end_rooms.lua) on the room's shard, released by that shard's sweep.
    await store.connect(cid="c6", uid=6, username="u6", channel="ch", now=now)
    assert await store.room_join(store.ConnRef("c6", 6), "den", now=now) == 1
    [ended] = await store.end_connections([store.ConnRef("c6", 6, ("den",))], now=now)
    assert ended.held
    found = sum(store.release_due(now=now + 10_000, shard=s)[1] for s in store.all_shards())
    assert found == 2  # the user's leave and the room's


async def test_job_scripts(on_cluster: None) -> None:
    shard = store.user_home(4)
    client = store.client_for(shard)
    past = store.now_ms() - 120_000
    await store.connect(cid="c4", uid=4, username="u4", channel="c", now=past)
    assert store.room_join_sync(store.ConnRef("c4", 4), "den", now=past) == 1
    batch = store.claim_expired(client, batch=10, claim_timeout_ms=30_000, shard=shard)
    assert [c.cid for c in batch.claims] == ["c4"]
    [swept] = store.end_swept_connections([store.ConnRef("c4", 4, ("den",))], shard=shard)
    assert swept.state == 1 and swept.rooms_left == ["den"]
    assert store.ack_swept(client, batch.deadline, ["c4"], shard=shard) == 1
    await store.connect(cid="c5", uid=5, username="u5", channel="c", now=past)
    assert store.room_join_sync(store.ConnRef("c5", 5), "hall", now=past) == 1
    assert store.repair_rooms(store.room_home("hall"), past + 120_000 + 3_600_000) == 1
    stats = store.user_home(5)  # the connect counted on the user's shard
    client = store.client_for(stats)
    assert store.claim_stats(client, "f1", shard=stats) is True
    assert store.release_stats_claim(client, "f1", shard=stats) is True
    token = store.acquire_task_lock(client, "sweep", 10_000)
    assert token is not None
    assert store.extend_task_lock(client, "sweep", token, 10_000) is True
    assert store.release_task_lock(client, "sweep", token) is True


async def test_every_script_ran_on_the_cluster(on_cluster: None, settings: Settings) -> None:
    RAN.clear()
    await test_connection_lifecycle_scripts(on_cluster)
    store.client_for(0).flushall()  # every primary: the next scenarios start empty
    await test_held_leaves_release(on_cluster, settings)
    settings.PRESENCE_LEAVE_GRACE = 0.0
    await test_job_scripts(on_cluster)
    files = {path.stem for path in LUA_DIR.glob("*.lua")}
    assert files - RAN == set(), f"scripts never run on the Cluster: {sorted(files - RAN)}"
    # The Cluster accepted them all; the keys of every single call also map to one slot.
    spread = sorted({name for name, slots in CALLS if len(slots) != 1})
    assert spread == [], f"calls whose keys span slots: {spread}"
    assert scripts_module.script("connect").name == "connect"


async def test_a_script_over_two_slots_is_refused(on_cluster: None) -> None:
    # The check above can fail: keys of two shards in one call are refused.
    from redis.exceptions import RedisClusterException, ResponseError

    client = store.aclient_for(0)
    ks = [store.keys(0).conns, store.keys(40).conns]
    with pytest.raises((RedisClusterException, ResponseError)):
        await scripts_module.script("sweep_ack").arun(client, ks, [0, "c1"])


# -- statically: every script's header declares its KEYS under one anchor -----------------

KEY_LINE = re.compile(r"^KEYS\[(\d+)\]\s+\{")
ANCHOR = re.compile(r"\{[A-Za-z]\}")


def declared_anchors(source: str) -> tuple[list[int], set[str]]:
    """The ``KEYS[n]`` indexes a script's header declares, and every anchor (``{P}``,
    ``{S}``) named in its key layout: from the first KEYS line to the first ARGV line,
    so the variable keys described in prose (``then, per held leave, ...``) count too."""
    header = source.split("]]", 1)[0].splitlines()
    first = next(i for i, line in enumerate(header) if KEY_LINE.match(line))
    layout = []
    for line in header[first:]:
        if line.startswith("ARGV["):
            break
        layout.append(line)
    indexes = [int(line[5 : line.index("]")]) for line in layout if KEY_LINE.match(line)]
    return indexes, set(ANCHOR.findall("\n".join(layout)))


@pytest.mark.parametrize("path", sorted(LUA_DIR.glob("*.lua")), ids=lambda p: p.stem)
def test_a_script_declares_its_keys_under_one_anchor(path: Path) -> None:
    indexes, anchors = declared_anchors(path.read_text())
    assert indexes == list(range(1, len(indexes) + 1)), f"{path.name}: KEYS not numbered 1..n"
    assert len(anchors) == 1, f"{path.name}: keys under more than one anchor: {sorted(anchors)}"


def test_the_anchor_check_can_fail() -> None:
    two = "--[[\nKEYS[1]  {P}:conns  ZSET\nthen per room: {S}:room:<room>\nARGV[1] now\n]]\n"
    assert declared_anchors(two) == ([1], {"{P}", "{S}"})
