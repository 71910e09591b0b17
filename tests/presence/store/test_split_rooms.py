"""Room joins and leaves with the user and the room on different shards (PRESENCE_SHARDS=64).

The store writes everything on shard 0 until the event-log readers follow every shard
(presence/store/shards.py: user_home, room_home). These tests flip room_home to the room's
own shard, so each join and leave runs its user half on the user's shard (0 here) and its
room half on the room's shard, as after the split: on one Redis and on a 3-primary Cluster
(one slot per script call). A process killed between the halves is played by running the
user half alone; repair_rooms on the room's shard then brings the room back to a model.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from pytest_django.fixtures import Settings

from presence import store
from presence.store import rooms as rooms_module
from presence.store.shards import room_shard, user_shard
from tests.support.cluster import ClusterTopology
from tests.support.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture

UID = next(uid for uid in range(1, 10_000) if user_shard(uid) == 0)
ROOM = next(f"room{n}" for n in range(10_000) if room_shard(f"room{n}") not in (0,))


@pytest.fixture(autouse=True)
def split_rooms(settings: Settings) -> Iterator[None]:
    """room_home -> the room's shard (the user's shard is 0 for UID either way)."""
    settings.PRESENCE_SHARDS = 64
    mp = pytest.MonkeyPatch()
    mp.setattr(rooms_module, "room_home", room_shard)
    yield
    mp.undo()


def stream(client: redis.Redis, shard: int) -> list[dict[str, str]]:
    """The fields of shard ``shard``'s event log, less ``p`` and ``t``."""
    raw: list = client.xrange(store.keys(shard).events, "-", "+")  # type: ignore[assignment]
    return [{f: v for f, v in fields.items() if f not in ("p", "t")} for _, fields in raw]


def room_events(client: redis.Redis, shard: int) -> list[tuple[str, str, str]]:
    return [(e["k"], e["r"], e["u"]) for e in stream(client, shard) if e["k"] in ("join", "leave")]


async def scenario(client: redis.Redis) -> None:
    """Join, leave, a join killed between its halves, and a lapse repaired: checked against
    a model of the room (members) and of each shard's stream."""
    user_k, rs = store.keys(0), room_shard(ROOM)
    room_k = store.keys(rs)
    now = store.now_ms()
    await store.connect(cid="c1", uid=UID, username="u", channel="ch", now=now)
    conn = store.ConnRef("c1", UID)

    assert await store.room_join(conn, ROOM, now=now) == 1
    assert client.smembers(user_k.conn_rooms("c1")) == {ROOM}
    assert client.zrange(room_k.room(ROOM), 0, -1) == [str(UID)]
    assert client.smembers(room_k.room_user(ROOM, UID)) == {"c1"}
    assert not client.exists(user_k.room(ROOM))  # nothing of the room on the user's shard
    assert room_events(client, rs) == [("join", ROOM, str(UID))]
    assert [e["k"] for e in stream(client, 0)] == ["open", "join"]  # global join only

    assert await store.room_leave(conn, ROOM) is True
    assert client.zcard(room_k.room(ROOM)) == 0
    assert room_events(client, rs)[-1] == ("leave", ROOM, str(UID))

    # Killed between the halves of a join: only the user side is written...
    halves = [user_k.conn("c1"), user_k.conn_rooms("c1"), user_k.user(UID)]
    store.script("room_join_user").run(client, halves, [GRACE_MS, ROOM])
    assert client.zcard(room_k.room(ROOM)) == 0
    # ...and the retry joins once.
    assert await store.room_join(conn, ROOM, now=now) == 1
    assert await store.room_join(conn, ROOM, now=now) == 0
    assert room_events(client, rs).count(("join", ROOM, str(UID))) == 2  # first join + rejoin

    # The connection lapses with nobody ending it (its process died): the repair of the
    # room's shard logs the leave once, and the room is empty as the model says.
    later = now + TTL_MS + GRACE_MS + 1_000
    assert store.repair_rooms(0, later) == 0  # not the room's shard: nothing there
    assert store.repair_rooms(rs, later) == 1
    assert store.repair_rooms(rs, later) == 0
    assert client.zcard(room_k.room(ROOM)) == 0
    assert room_events(client, rs)[-1] == ("leave", ROOM, str(UID))
    assert client.zcard(room_k.rooms) == 0


async def test_join_leave_and_repair_across_shards_on_one_redis(r: redis.Redis) -> None:
    assert room_shard(ROOM) != user_shard(UID)
    await scenario(r)


async def test_join_leave_and_repair_across_shards_on_a_cluster(
    redis_cluster: ClusterTopology, settings: Settings
) -> None:
    settings.PRESENCE_REDIS_CLUSTER_URL = redis_cluster.url
    store.reset_clients()
    try:
        client = store.client_for(0)
        client.flushall()
        # Different shards of 64 over 3 nodes: the halves may run on different nodes.
        await scenario(client)
    finally:
        store.reset_clients()
