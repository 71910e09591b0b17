"""Protocol v1 close codes: 4408, 4410, 4429 (with ``rate_limited``) and 1009.

Every 4xxx close is preceded by an error frame carrying the reason; ``recv_close`` returns the
frames seen before the close so each test checks that frame too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from channels.layers import get_channel_layer
from pytest_django.fixtures import Settings

from tests.support.homes import room_keys, user_keys
from tests.support.redis import mark_ended

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def bob(ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis) -> Any:
    client = await ws_client(await auser_factory("bob"))
    await client.recv()  # his own join
    assert r.hexists(conn_key(client), "uid")  # where the checks of "ended" below look
    return client


def channel_of(r: redis.Redis, client: Any) -> str:
    """The channel name connect.lua stored for this connection (on its user's shard)."""
    channel = r.hget(conn_key(client), "channel")
    assert channel
    return str(channel)


def conn_key(client: Any) -> str:
    """The hash of ``client``'s connection, on its user's shard."""
    return user_keys(client.hello["user"]["id"]).conn(client.hello["session_id"])


def end(r: redis.Redis, client: Any) -> None:
    """End ``client``'s connection in the store as a sweep would (on its user's shard)."""
    mark_ended(r, client.hello["session_id"], uid=client.hello["user"]["id"])


def assert_reason_frame(frames: list[dict[str, Any]], code: str) -> None:
    assert frames, "no error frame before the close"
    last = frames[-1]
    assert (last["type"], last["id"], last["code"]) == ("error", None, code)
    assert last["message"]


class TestExpired4408:
    async def test_heartbeat_after_the_state_was_removed(self, bob: Any, r: redis.Redis) -> None:
        end(r, bob)  # e.g. ended by a sweep

        await bob.send({"type": "heartbeat", "id": 5})
        code, frames = await bob.recv_close()

        assert code == 4408
        assert_reason_frame(frames, "presence_expired")
        assert not any(f["type"] == "heartbeat.ack" for f in frames)

    async def test_heartbeat_after_redis_lost_everything(self, bob: Any, r: redis.Redis) -> None:
        # A restart without data (or a failover that lost the latest writes): the socket is
        # still open, so it is written back instead of closed (presence/actions/recovery.py).
        r.flushall()

        ack = await bob.request("heartbeat", id_=5)

        assert ack == {"type": "heartbeat.ack", "id": 5}
        uid = bob.hello["user"]["id"]
        assert r.zscore(user_keys(uid).users, str(uid)) is not None
        assert r.hget(conn_key(bob), "channel")

    async def test_room_join_after_the_state_was_removed(self, bob: Any, r: redis.Redis) -> None:
        end(r, bob)

        await bob.send({"type": "room.join", "id": 1, "data": {"room": "lobby"}})
        code, frames = await bob.recv_close()

        assert code == 4408
        assert_reason_frame(frames, "presence_expired")
        assert r.zcard(room_keys("lobby").room("lobby")) == 0

    async def test_presence_expire_message(self, bob: Any, r: redis.Redis) -> None:
        layer = get_channel_layer()
        assert layer is not None

        await layer.send(channel_of(r, bob), {"type": "presence.expire"})
        code, frames = await bob.recv_close()

        assert code == 4408
        assert_reason_frame(frames, "presence_expired")


class TestAfterTheClose:
    """Once the server closed, nothing more goes out: ASGI servers reject sends after close."""

    async def test_frames_queued_behind_the_closing_one_are_ignored(
        self, bob: Any, r: redis.Redis
    ) -> None:
        end(r, bob)

        for i in range(4):
            await bob.send({"type": "heartbeat", "id": i})
        code, frames = await bob.recv_close(finish=False)

        assert code == 4408
        assert [f["code"] for f in frames] == ["presence_expired"]
        assert await bob.comm.receive_nothing(0.3)  # no second error frame, no second close
        await bob.comm.disconnect(code=code)

    async def test_events_after_the_close_are_not_sent(
        self, bob: Any, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        layer = get_channel_layer()
        assert layer is not None
        channel = channel_of(r, bob)

        await layer.send(channel, {"type": "session.kick"})
        await layer.send(channel, {"type": "presence.expire"})
        await ws_client(await auser_factory("carol"))  # a global join event for bob
        code, frames = await bob.recv_close(finish=False)

        assert code == 4410
        assert [f["code"] for f in frames] == ["terminated"]
        assert await bob.comm.receive_nothing(0.3)
        await bob.comm.disconnect(code=code)


class TestKicked4410:
    async def test_session_kick_message(
        self, bob: Any, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        watcher = await ws_client(await auser_factory("carol"))
        await watcher.recv_until(lambda f: f.get("event") == "join")
        layer = get_channel_layer()
        assert layer is not None

        await layer.send(channel_of(r, bob), {"type": "session.kick"})
        code, frames = await bob.recv_close()

        assert code == 4410
        assert_reason_frame(frames, "terminated")
        # The kicked user's presence ends like any close.
        leave = await watcher.recv_until(lambda f: f.get("event") == "leave")
        assert leave["user"] == bob.hello["user"]
        assert not r.hexists(conn_key(bob), "uid")  # ended

    async def test_kick_reaches_only_that_connection(
        self, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        user = await auser_factory("bob")
        first, second = await ws_client(user), await ws_client(user)
        layer = get_channel_layer()
        assert layer is not None

        await layer.send(channel_of(r, first), {"type": "session.kick"})

        assert (await first.recv_close())[0] == 4410
        assert (await second.request("heartbeat", id_=1))["type"] == "heartbeat.ack"


class TestFlooding4429:
    @pytest.fixture(autouse=True)
    def _limits(self, settings: Settings) -> None:
        settings.PRESENCE_RATE_LIMIT = 0.01  # practically no refill during the test
        settings.PRESENCE_RATE_BURST = 3
        settings.PRESENCE_FLOOD_DROPS = 6
        settings.PRESENCE_FLOOD_WINDOW = 10

    async def test_rate_limited_once_then_closed(self, bob: Any) -> None:
        for i in range(3 + 6 + 10):  # a flooder does not stop at the close
            await bob.send({"type": "heartbeat", "id": i})

        code, frames = await bob.recv_close(finish=False)
        assert await bob.comm.receive_nothing(0.3)  # one close, nothing after it
        await bob.comm.disconnect(code=code)

        assert code == 4429
        assert [f["id"] for f in frames if f["type"] == "heartbeat.ack"] == [0, 1, 2]
        errors = [f["code"] for f in frames if f["type"] == "error"]
        # At most one rate_limited per second, then the reason for the close.
        assert errors == ["rate_limited", "flooding"]
        assert_reason_frame(frames, "flooding")

    async def test_dropped_frames_are_not_processed(self, bob: Any, r: redis.Redis) -> None:
        for i in range(3):
            await bob.request("heartbeat", id_=i)
        await bob.send({"type": "room.join", "id": "dropped", "data": {"room": "lobby"}})

        error = await bob.recv()

        assert (error["type"], error["code"], error["id"]) == ("error", "rate_limited", None)
        assert await bob.no_frame(0.2)
        assert r.zcard(room_keys("lobby").room("lobby")) == 0


class TestRateLimited:
    async def test_at_most_one_notice_per_second_and_the_socket_stays_open(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_RATE_LIMIT = 10
        settings.PRESENCE_RATE_BURST = 1
        bob = await ws_client(await auser_factory("bob"))
        await bob.recv()
        for i in range(6):
            await bob.send({"type": "heartbeat", "id": i})

        frames = [await bob.recv() for _ in range(2)]
        assert frames[0] == {"type": "heartbeat.ack", "id": 0}
        assert (frames[1]["type"], frames[1]["code"]) == ("error", "rate_limited")
        assert await bob.no_frame(0.3)  # the other drops were silent

        await asyncio.sleep(0.8)  # > 1 s since the notice, and a token is back
        assert (await bob.request("heartbeat", id_="later"))["type"] == "heartbeat.ack"
        for i in range(5):
            await bob.send({"type": "heartbeat", "id": f"burst{i}"})
        notice = await bob.recv()
        assert (notice["type"], notice["code"]) == ("error", "rate_limited")
        assert await bob.no_frame(0.2)


class TestTooBig1009:
    @pytest.fixture(autouse=True)
    def _limit(self, settings: Settings) -> None:
        settings.WS_MAX_MESSAGE_BYTES = 1024

    async def test_frame_at_the_limit_is_served(self, bob: Any) -> None:
        prefix = '{"type":"heartbeat","id":1,"pad":"'
        text = prefix + "x" * (1024 - len(prefix) - 2) + '"}'
        assert len(text.encode()) == 1024

        await bob.send_raw(text=text)

        assert await bob.recv() == {"type": "heartbeat.ack", "id": 1}

    @pytest.mark.parametrize(
        "frame",
        [
            pytest.param({"text": '{"type":"heartbeat","pad":"' + "x" * 1100 + '"}'}, id="text"),
            # 600 characters but 1200 bytes: the limit is on bytes.
            pytest.param({"text": '{"type":"heartbeat","pad":"' + "é" * 600 + '"}'}, id="utf8"),
            pytest.param({"data": b"\x00" * 1025}, id="binary"),
        ],
    )
    async def test_over_size_frame_closes_1009(
        self, bob: Any, r: redis.Redis, frame: dict[str, Any]
    ) -> None:
        await bob.send_raw(**frame)
        code, frames = await bob.recv_close()

        assert code == 1009
        assert frames == []
        assert not r.hexists(conn_key(bob), "uid")  # ended
