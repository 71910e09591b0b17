"""stats_claim.lua and stats_release.lua, run directly against the private Redis.

The flush's exactly-once guarantee rests on these two: a claim moves every live counter
away atomically and registers itself, a release forgets it once.
"""

from __future__ import annotations

import pytest
import redis

from presence import store

# A shard other than 0: each function must be told the shard (no default to fall back on).
SHARD = 5


class TestStatsClaim:
    def test_claim_moves_all_counters_and_registers_the_id(self, r: redis.Redis) -> None:
        k = store.keys(SHARD)
        r.hset(k.stats, mapping={"heartbeats": 7, "err:bad_json": 2, "peak_users": 3})

        assert store.claim_stats(r, "f1", now=1_000, shard=SHARD) is True

        assert r.exists(k.stats) == 0  # the hot path starts a fresh hash
        assert store.read_stats_claim(r, "f1", shard=SHARD) == {
            "heartbeats": 7,
            "err:bad_json": 2,
            "peak_users": 3,
        }
        assert store.list_stats_claims(r, 10, shard=SHARD) == [("f1", 1_000)]

    def test_nothing_to_claim(self, r: redis.Redis) -> None:
        assert store.claim_stats(r, "f1", shard=SHARD) is False
        assert store.list_stats_claims(r, 10, shard=SHARD) == []

    def test_increments_after_a_claim_go_to_the_next_claim(self, r: redis.Redis) -> None:
        k = store.keys(SHARD)
        r.hincrby(k.stats, "connects", 1)
        store.claim_stats(r, "f1", now=1, shard=SHARD)
        r.hincrby(k.stats, "connects", 5)
        store.claim_stats(r, "f2", now=2, shard=SHARD)

        assert store.read_stats_claim(r, "f1", shard=SHARD) == {"connects": 1}
        assert store.read_stats_claim(r, "f2", shard=SHARD) == {"connects": 5}
        assert store.list_stats_claims(r, 10, shard=SHARD) == [("f1", 1), ("f2", 2)]

    def test_a_flush_id_is_never_reused(self, r: redis.Redis) -> None:
        k = store.keys(SHARD)
        r.hincrby(k.stats, "connects", 1)
        store.claim_stats(r, "f1", shard=SHARD)
        r.hincrby(k.stats, "connects", 1)

        with pytest.raises(redis.ResponseError, match="flush id already used"):
            store.claim_stats(r, "f1", shard=SHARD)
        assert store.read_stats_claim(r, "f1", shard=SHARD) == {"connects": 1}  # not overwritten
        assert r.hget(k.stats, "connects") == "1"  # and the live counter kept


class TestStatsRelease:
    def test_release_forgets_the_claim_once(self, r: redis.Redis) -> None:
        r.hincrby(store.keys(SHARD).stats, "heartbeats", 4)
        store.claim_stats(r, "f1", shard=SHARD)

        assert store.release_stats_claim(r, "f1", shard=SHARD) is True
        assert store.read_stats_claim(r, "f1", shard=SHARD) == {}
        assert store.list_stats_claims(r, 10, shard=SHARD) == []
        assert (
            store.release_stats_claim(r, "f1", shard=SHARD) is False
        )  # a second release is a no-op

    def test_release_leaves_other_claims(self, r: redis.Redis) -> None:
        k = store.keys(SHARD)
        for fid in ("f1", "f2"):
            r.hincrby(k.stats, "heartbeats", 1)
            store.claim_stats(r, fid, now=1 if fid == "f1" else 2, shard=SHARD)

        store.release_stats_claim(r, "f1", shard=SHARD)

        assert store.list_stats_claims(r, 10, shard=SHARD) == [("f2", 2)]
        assert store.read_stats_claim(r, "f2", shard=SHARD) == {"heartbeats": 1}
