"""The event log reader over many shards: one stream per shard, gaps per shard, the global
scope's own positions, the reads on one Redis, on independent primaries and on a Cluster."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from django.test import override_settings

from presence import store
from presence.live import eventlog
from presence.live.diffs import Event, Pos, position
from presence.live.fanout import GLOBAL
from presence.store.shards import shard_slot
from tests.support.cluster import ClusterTopology

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

SHARDS = 8


class Socket:
    """What the reader needs of a socket (presence.live.diffs.Subscriber): frames kept."""

    def __init__(self, protocol: int = 1) -> None:
        self.protocol = protocol
        self.positions: dict[str, Pos] = {}
        self.pending: dict[str, list[tuple[str, Sequence[Event]]]] = {}
        self.frames: list[dict[str, Any]] = []

    def deliver(self, text: str) -> None:
        self.frames.append(json.loads(text))


def append(client: Any, shard: int, **fields: Any) -> str:
    """Append to ``shard``'s stream as lib/eventlog.lua does (``p``: the previous entry)."""
    key = store.keys(shard).events
    last = client.xrevrange(key, "+", "-", count=1)
    entry = {"p": last[0][0] if last else "0-0", "t": "0", "r": "", "n": "", "s": "online"}
    entry.update({k: str(v) for k, v in fields.items()})
    return str(client.xadd(key, entry))


async def wait_for(check: Any, within: float = 5.0) -> bool:
    """Poll ``check`` until true (the reader runs on this loop between polls)."""
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)


def joins(sock: Socket) -> list[int]:
    return [f["user"]["id"] for f in sock.frames if f.get("event") == "join"]


@pytest.fixture
def shards(settings: Any) -> int:
    settings.PRESENCE_SHARDS = SHARDS
    settings.PRESENCE_GLOBAL_EVENTS = True
    return SHARDS


class TestOneRedis:
    async def test_every_shard_is_followed_on_one_blocking_connection(
        self, shards: int, r: redis.Redis
    ) -> None:
        before = {c["id"] for c in r.client_list()}
        reader = await eventlog.ensure_reader()
        sock = Socket()
        reader.register(sock)

        for shard in range(shards):
            append(r, shard, k="join", u=100 + shard, n=f"u{shard}")

        assert await wait_for(lambda: len(joins(sock)) == shards)
        assert sorted(joins(sock)) == [100 + s for s in range(shards)]
        assert len(reader.tasks) == 1  # one node: one reading task
        blocked = [c for c in r.client_list() if c["id"] not in before and c["cmd"] == "xread"]
        assert len(blocked) <= 1  # XREAD BLOCK names every shard's stream

    async def test_a_gap_on_one_shard_resyncs_and_the_others_go_on(
        self, shards: int, r: redis.Redis
    ) -> None:
        reader = await eventlog.ensure_reader()
        sock = Socket()
        reader.register(sock)
        append(r, 1, k="join", u=1)
        assert await wait_for(lambda: joins(sock) == [1])

        # Shard 2's next entry names a predecessor the reader never saw: entries were lost.
        r.xadd(store.keys(2).events, {"k": "join", "p": "1-1", "t": "0", "r": "", "u": "2"})
        assert await wait_for(lambda: reader.resyncs == 1)
        append(r, 3, k="join", u=3)
        append(r, 2, k="join", u=4)  # after the resync's position on shard 2: delivered

        assert await wait_for(lambda: joins(sock) == [1, 3, 4])
        assert reader.last[2] == str(r.xrevrange(store.keys(2).events, count=1)[0][0])

    async def test_global_positions_grow_whatever_the_shards_ids(
        self, shards: int, r: redis.Redis
    ) -> None:
        reader = await eventlog.ensure_reader()
        # Shard 5's stream is far ahead of shard 6's (its ids are in the future).
        r.xadd(
            store.keys(5).events, {"k": "open", "p": "0-0", "t": "0", "u": "9"}, id="9" * 13 + "-0"
        )
        assert await wait_for(lambda: reader.last.get(5, "0-0") != "0-0")
        sock = Socket(protocol=2)
        reader.register(sock)
        sock.positions[GLOBAL] = reader.pos  # synced now
        start = reader.pos

        append(r, 6, k="join", u=61)
        append(r, 5, k="join", u=51)
        append(r, 6, k="join", u=62)

        def seen() -> list[int]:
            return [u["id"] for f in sock.frames for u in f.get("join", [])]

        assert await wait_for(lambda: sorted(seen()) == [51, 61, 62])
        seqs = [position(f["seq"]) for f in sock.frames]
        assert seqs == sorted(seqs) and seqs[0] > start
        prevs = [position(f["prev"]) for f in sock.frames]
        assert all(p < s for p, s in zip(prevs, seqs, strict=True))

    async def test_rooms_keep_their_shards_positions(self, shards: int, r: redis.Redis) -> None:
        reader = await eventlog.ensure_reader()
        sock = Socket(protocol=2)
        reader.register(sock)
        room = "lobby"
        shard = store.room_shard(room)
        reader.v2.join(sock, room)
        sock.positions[room] = position(await store.log_position(shard))

        eid = append(r, shard, k="join", r=room, u=7, n="g")

        assert await wait_for(lambda: any(f.get("room") == room for f in sock.frames))
        diff = next(f for f in sock.frames if f.get("room") == room)
        assert diff["seq"] == eid  # the room's shard's stream id


class TestSnapshots:
    async def test_a_global_snapshot_reads_every_shard_at_its_position(
        self, shards: int, r: redis.Redis
    ) -> None:
        far = store.now_ms() + 60_000
        for uid in (1, 2, 3, 4, 5, 6):
            k = store.keys(store.user_shard(uid))
            r.zadd(k.users, {str(uid): far})
            r.zadd(k.user_conns(uid), {f"c{uid}": far})
            r.hset(k.user(uid), mapping={"username": f"u{uid}", "status": "online"})
        marks = {s: append(r, s, k="open", u=0) for s in range(shards)}

        (snap,) = await store.snapshots([None], limit=100)

        assert snap.count == 6 and snap.complete
        assert sorted(u["id"] for u in snap.users) == [1, 2, 3, 4, 5, 6]
        assert snap.positions == marks
        assert await store.aonline_count() == 6


@pytest.mark.slow
class TestShapes:
    async def test_independent_primaries_one_task_per_node(
        self, shards: int, redis_shards: list[str]
    ) -> None:
        with override_settings(
            PRESENCE_REDIS_SHARD_URLS=redis_shards, PRESENCE_REDIS_CLUSTER_URL=None
        ):
            store.reset_clients()
            reader = await eventlog.ensure_reader()
            sock = Socket()
            reader.register(sock)
            for shard in range(shards):
                append(store.client_for(shard), shard, k="join", u=200 + shard)

            assert await wait_for(lambda: len(joins(sock)) == shards)
            assert len(reader.tasks) == len(store.group_parts()) == 3

    async def test_a_cluster_reader_polls_every_shard(
        self, shards: int, redis_cluster: ClusterTopology
    ) -> None:
        with override_settings(
            PRESENCE_REDIS_CLUSTER_URL=redis_cluster.url, PRESENCE_REDIS_SHARD_URLS=[]
        ):
            store.reset_clients()
            assert store.log_polled()
            reader = await eventlog.ensure_reader()
            sock = Socket()
            reader.register(sock)
            client = store.client_for(0)
            for shard in range(shards):
                append(client, shard, k="join", u=300 + shard)

            assert await wait_for(lambda: len(joins(sock)) == shards)
            assert len(reader.tasks) == 1  # one cluster client, pipelines split per node
            # the shards' streams are spread over the three primaries
            owners = {redis_cluster.slot_owner(shard_slot(s)).port for s in range(shards)}
            assert len(owners) == 3


@pytest.mark.slow
async def test_a_cluster_reader_follows_slots_moving_under_it(
    shards: int, fresh_cluster: ClusterTopology
) -> None:
    """Slots migrate (redis-cli --cluster reshard) while entries are appended: the reader
    gets every entry once, in each shard's order, and sees no gap."""
    with override_settings(
        PRESENCE_REDIS_CLUSTER_URL=fresh_cluster.url, PRESENCE_REDIS_SHARD_URLS=[]
    ):
        store.reset_clients()
        reader = await eventlog.ensure_reader()
        sock = Socket()
        reader.register(sock)
        writer = fresh_cluster.client()
        stop = threading.Event()
        sent: list[int] = []

        def write() -> None:
            uid = 1000
            while not stop.is_set():
                append(writer, uid % shards, k="join", u=uid)
                sent.append(uid)
                uid += 1
                time.sleep(0.002)

        thread = threading.Thread(target=write)
        thread.start()
        try:
            # shards 0 and 1 live in node 0's first 4096 slots: they move to node 1
            await asyncio.to_thread(fresh_cluster.reshard, 0, 1, 4096)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 30)

        assert await wait_for(lambda: len(joins(sock)) == len(sent), within=10)
        assert sorted(joins(sock)) == sorted(sent) and len(set(joins(sock))) == len(sent)
        assert reader.resyncs == 0
        assert fresh_cluster.slot_owner(shard_slot(0)) is fresh_cluster.nodes[1]
