"""The connect gate against real Redis: limits, rate, blocks, revocations, single-use tokens.

connect.lua decides the user side in one EVALSHA; with an address gate, connect_gate.lua
runs first on the address's shard. A refusal registers nothing and logs nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from presence import store
from tests.support.eventlog import logged
from tests.support.homes import addr_keys, user_keys

pytestmark = pytest.mark.timeout(30)

IP = "203.0.113.9"


async def connect(
    cid: str, uid: int = 1, *, ip: str = IP, now: int | None = None, **gate: Any
) -> store.ConnectResult:
    return await store.connect(
        cid=cid,
        uid=uid,
        username=f"user{uid}",
        channel=f"ch-{cid}",
        ip=ip,
        now=now,
        gate=store.ConnectGate(**gate),
    )


async def end(cid: str, uid: int = 1) -> None:
    await store.end_connections([store.ConnRef(cid, uid)])


def assert_nothing_registered(r: redis.Redis, cid: str, entries_before: int, uid: int = 1) -> None:
    k = user_keys(uid)  # a connection's keys live on its user's shard
    assert not r.exists(k.conn(cid))
    assert r.zscore(k.conns, cid) is None
    assert len(logged(r)) == entries_before


class TestPerUser:
    async def test_refuses_past_the_limit_and_counts_only_live_connections(
        self, r: redis.Redis
    ) -> None:
        for i in range(3):
            assert not (await connect(f"c{i}", max_per_user=3)).refused
        before = len(logged(r))

        refused = await connect("c3", max_per_user=3)

        assert refused.refused == "too_many_connections"
        assert_nothing_registered(r, "c3", before)
        await end("c0")
        assert not (await connect("c4", max_per_user=3)).refused

    async def test_other_users_are_not_counted(self, r: redis.Redis) -> None:
        await connect("a", uid=1, max_per_user=1)
        assert not (await connect("b", uid=2, max_per_user=1)).refused


class TestPerAddress:
    async def test_refuses_past_the_limit_across_users(self, r: redis.Redis) -> None:
        for i in range(3):
            assert not (await connect(f"c{i}", uid=i, max_per_address=3)).refused
        before = len(logged(r))

        refused = await connect("c3", uid=9, max_per_address=3)

        assert refused.refused == "too_many_from_address"
        assert_nothing_registered(r, "c3", before, uid=9)
        assert not (await connect("elsewhere", uid=9, ip="198.51.100.7", max_per_address=3)).refused

    async def test_ended_connections_are_pruned_when_the_set_looks_full(
        self, r: redis.Redis
    ) -> None:
        now = store.now_ms()
        for i in range(3):
            await connect(f"c{i}", uid=i, now=now, max_per_address=3)
        await end("c1", uid=1)  # end.lua does not know the address; the gate prunes
        later = now + store.address_pending_ms()

        assert not (await connect("c3", uid=3, now=later, max_per_address=3)).refused
        members = sorted(r.zrange(addr_keys(IP).addr_conns(IP), 0, -1))
        assert members == ["0|c0", "2|c2", "3|c3"]  # <uid>|<cid>: the prune finds the shard

    async def test_concurrent_connects_from_one_address_keep_its_limit(
        self, r: redis.Redis
    ) -> None:
        # All three pass the address's shard before any registers on its user's shard: the
        # third finds two members without a connection hash, which are not gone but pending.
        results = await asyncio.gather(
            *(connect(f"c{i}", uid=i, max_per_address=2) for i in range(3))
        )

        assert sorted(result.refused for result in results) == ["", "", "too_many_from_address"]
        assert r.zcard(addr_keys(IP).addr_conns(IP)) == 2

    async def test_a_member_that_never_registers_frees_its_place_after_the_grace(
        self, r: redis.Redis
    ) -> None:
        now = store.now_ms()
        await connect("c0", uid=0, now=now, max_per_address=2)
        # A connect that passed the gate and died before registering (its process was killed).
        r.zadd(addr_keys(IP).addr_conns(IP), {"7|lost": now})
        grace = store.address_pending_ms()

        refused = await connect("c1", uid=1, now=now + 1000, max_per_address=2)

        assert refused.refused == "too_many_from_address"
        assert refused.retry_after_ms == grace - 1000
        assert not (await connect("c2", uid=2, now=now + grace, max_per_address=2)).refused
        members = sorted(r.zrange(addr_keys(IP).addr_conns(IP), 0, -1))
        assert members == ["0|c0", "2|c2"]

    async def test_unknown_address_is_not_limited(self, r: redis.Redis) -> None:
        for i in range(3):
            assert not (await connect(f"c{i}", uid=i, ip="", max_per_address=1)).refused


class TestConnectRate:
    async def test_a_burst_then_the_refill_rate(self, r: redis.Redis) -> None:
        now = store.now_ms()
        for i in range(4):
            assert not (
                await connect(f"c{i}", uid=i, now=now, address_rate=2, address_burst=4)
            ).refused

        refused = await connect("c4", uid=4, now=now, address_rate=2, address_burst=4)

        assert refused.refused == "connect_rate"
        assert refused.retry_after_ms == 500  # one token at 2 per second
        later = await connect("c5", uid=5, now=now + 500, address_rate=2, address_burst=4)
        assert not later.refused


class TestCredentials:
    async def test_a_token_opens_one_connection(self, r: redis.Redis) -> None:
        gate = {"token_id": "sig1", "token_ttl_ms": 60_000}
        assert not (await connect("c1", **gate)).refused
        before = len(logged(r))

        again = await connect("c2", **gate)

        assert again.refused == "token_used"
        assert_nothing_registered(r, "c2", before)

    async def test_tokens_issued_before_a_revocation_are_refused(self, r: redis.Redis) -> None:
        now = store.now_ms()
        store.revoke_user_credentials(1, now=now)

        assert (await connect("old", issued_ms=now - 1000)).refused == "token_revoked"
        assert not (await connect("new", issued_ms=now + 1000)).refused
        assert not (await connect("cookie", issued_ms=0)).refused  # issue time unknown

    async def test_a_revoked_login_session_is_refused(self, r: redis.Redis) -> None:
        store.revoke_login("L1", seconds=60, uid=1)

        assert (await connect("c1", login="L1")).refused == "session_revoked"
        assert not (await connect("c2", login="L2")).refused
        # Two marks: the user's copy (connect.lua) and the login's own (the handshake's check).
        for k in (user_keys(1), store.keys(store.login_home("L1"))):
            assert 59_000 < r.pttl(k.login_revoked("L1")) <= 60_000

    async def test_a_blocked_user_is_refused_until_the_block_ends(self, r: redis.Redis) -> None:
        store.set_user_block(1, until_ms=store.now_ms() + 5_000, reason="spam")

        refused = await connect("c1")

        assert refused.refused == "blocked"
        assert 4_000 < refused.retry_after_ms <= 5_000
        store.clear_user_block(1)
        assert not (await connect("c2")).refused

    async def test_the_block_is_checked_first(self, r: redis.Redis) -> None:
        """A refused attempt must not spend the token or a rate token before a block says no."""
        store.set_user_block(1, until_ms=store.now_ms() + 5_000, reason="spam")

        await connect("c1", token_id="sig2", token_ttl_ms=60_000, address_rate=1, address_burst=1)

        assert not r.exists(user_keys(1).token_used("sig2"))
        assert not r.exists(addr_keys(IP).addr_rate(IP))


class TestTwoShards:
    """The address's shard is passed first; the user's shard may still refuse."""

    async def test_a_refusal_on_the_user_side_gives_the_place_back(self, r: redis.Redis) -> None:
        assert not (await connect("c1", max_per_user=1, max_per_address=5)).refused

        refused = await connect("c2", max_per_user=1, max_per_address=5)

        assert refused.refused == "too_many_connections"
        assert r.zrange(addr_keys(IP).addr_conns(IP), 0, -1) == ["1|c1"]

    async def test_a_refusal_on_the_user_side_gives_the_rate_token_back(
        self, r: redis.Redis
    ) -> None:
        now = store.now_ms()
        rate = {"now": now, "address_rate": 0.001, "address_burst": 2}  # no refill to speak of
        store.set_user_block(2, until_ms=now + 5_000, reason="spam")
        assert not (await connect("c1", uid=1, **rate)).refused

        assert (await connect("c2", uid=2, **rate)).refused == "blocked"

        assert not (await connect("c3", uid=3, **rate)).refused  # the second token
        assert (await connect("c4", uid=4, **rate)).refused == "connect_rate"

    async def test_when_both_sides_refuse_the_user_side_says_why(self, r: redis.Redis) -> None:
        now = store.now_ms()
        rate = {"now": now, "address_rate": 0.001, "address_burst": 1}
        assert not (await connect("c1", uid=1, **rate)).refused
        store.set_user_block(2, until_ms=now + 5_000, reason="spam")

        assert (await connect("c2", uid=2, **rate)).refused == "blocked"
        assert (await connect("c3", uid=3, **rate)).refused == "connect_rate"

    async def test_a_token_refused_by_the_address_is_spent(self, r: redis.Redis) -> None:
        now = store.now_ms()
        rate = {"address_rate": 1, "address_burst": 1}
        token = {"token_id": "sig3", "token_ttl_ms": 60_000}
        assert not (await connect("c1", uid=1, now=now, **rate)).refused
        assert (await connect("c2", uid=2, now=now, **rate, **token)).refused == "connect_rate"

        again = await connect("c3", uid=2, now=now + 5_000, **rate, **token)

        assert again.refused == "token_used"  # a token opens at most one attempt


class TestAtomicity:
    async def test_a_broken_address_set_fails_before_any_write(self, r: redis.Redis) -> None:
        """The gate's first write (the rate bucket) must not happen when a later one fails."""
        r.set(addr_keys(IP).addr_conns(IP), "not a zset")
        before = len(logged(r))

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await connect("c1", max_per_address=5, address_rate=1, address_burst=5)

        assert not r.exists(addr_keys(IP).addr_rate(IP))
        assert_nothing_registered(r, "c1", before)
