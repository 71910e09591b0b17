"""What counts as "the store is away" (presence/store/faults.py), on real servers' replies."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from presence import store
from tests.support.sentinel import SentinelTopology


class TestIsUnavailable:
    def test_a_script_writing_to_a_replica_is_an_outage(
        self, sentinel_topology: SentinelTopology
    ) -> None:
        replica = sentinel_topology.replica().client()
        with pytest.raises(ResponseError) as caught:
            store.script("heartbeat").run(replica, store.keys().fixed(), [1, 1, 1, 1, "x", 1, 0])
        # Redis wraps it: "Error running script ...: @user_script: 33: -READONLY You can't ..."
        assert "READONLY" in str(caught.value)
        assert store.is_unavailable(caught.value)

    def test_a_bad_command_is_not(self, r: redis.Redis) -> None:
        r.set("k", "a string")
        with pytest.raises(ResponseError) as caught:
            r.hget("k", "f")
        assert not store.is_unavailable(caught.value)

    @pytest.mark.parametrize(
        "reply",
        ["LOADING Redis is loading", "MASTERDOWN Link down", "TRYAGAIN x", "NOREPLICAS Not enough"],
    )
    def test_transient_replies(self, reply: str) -> None:
        assert store.is_unavailable(ResponseError(reply))

    def test_connection_errors_and_timeouts(self) -> None:
        assert store.is_unavailable(RedisConnectionError("refused"))
        assert store.is_unavailable(store.StoreTimeoutError("slow"))


class TestBounded:
    async def test_a_timeout_is_a_store_timeout_and_a_timeout_error(self) -> None:
        with pytest.raises(store.StoreTimeoutError) as caught:
            async with store.bounded(extra=-2.95):  # 0.05 s with the default 3 s
                await asyncio.sleep(1)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, redis.TimeoutError)
