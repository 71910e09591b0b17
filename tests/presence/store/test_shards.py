"""presence/store/shards.py: the shard of a user/room/address, shard tags and the jump hash.

Pure functions; no Redis. The tags must spread N shards over N equal, consecutive slot
ranges (so ``redis-cli --cluster create`` gives each node N / nodes shards) and be the same
in every process.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.test import override_settings
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from presence import store
from presence.store import shards


class TestShardOf:
    def test_users_rooms_and_addresses_spread_over_every_shard(self) -> None:
        n = shards.shard_count()
        assert n == 64  # the default
        for of in (shards.user_shard, shards.room_shard, shards.ip_shard):
            seen = Counter(of(i) for i in range(20_000))
            assert set(seen) == set(range(n))
            # 20k over 64: ~312 each; a skewed hash would leave some far under
            assert min(seen.values()) > 200, of.__name__

    def test_a_user_and_a_room_of_the_same_name_are_hashed_apart(self) -> None:
        differ = sum(shards.user_shard(i) != shards.room_shard(str(i)) for i in range(1000))
        assert differ > 900

    def test_the_same_name_gives_the_same_shard(self) -> None:
        assert shards.user_shard(42) == shards.user_shard("42") == shards.user_shard(42)

    @override_settings(PRESENCE_SHARDS=1)
    def test_one_shard_holds_everything(self) -> None:
        assert {shards.user_shard(i) for i in range(100)} == {0}
        assert {shards.room_shard(str(i)) for i in range(100)} == {0}


class TestShardTags:
    @pytest.mark.parametrize("count", [1, 3, 16, 64, 128])
    def test_tag_n_lies_in_slot_bucket_n(self, count: int) -> None:
        with override_settings(PRESENCE_SHARDS=count):
            slots = [shards.shard_slot(n) for n in range(count)]
        assert slots == sorted(slots)  # consecutive buckets, in order
        for n, slot in enumerate(slots):
            first, last = shards.slot_range(n, count)
            assert first <= slot <= last
        # the buckets cover the slot space exactly
        assert shards.slot_range(0, count)[0] == 0
        assert shards.slot_range(count - 1, count)[1] == REDIS_CLUSTER_HASH_SLOTS - 1

    def test_a_tag_is_a_hash_tag_of_its_slot(self) -> None:
        tag = shards.shard_tag(5)
        assert tag.startswith("{presence:5:") and tag.endswith("}")
        assert key_slot(f"{tag}:conns".encode()) == shards.shard_slot(5)

    def test_three_equal_nodes_hold_a_third_of_the_shards_each(self) -> None:
        # redis-cli --cluster create with 3 primaries: 0-5460, 5461-10922, 10923-16383
        bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
        per_node = Counter(
            next(i for i, (lo, hi) in enumerate(bounds) if lo <= shards.shard_slot(n) <= hi)
            for n in range(64)
        )
        assert sorted(per_node.values()) in ([21, 21, 22], [21, 22, 21], [22, 21, 21])

    def test_the_prefix_is_part_of_the_tag(self) -> None:
        with override_settings(PRESENCE_KEY_PREFIX="other"):
            assert shards.shard_tag(0).startswith("{other:0:")

    def test_the_docs_spell_shard_0s_default_tag(self) -> None:
        # docs/operations.md and docs/hooks.md show redis-cli lines on shard 0's keys.
        assert shards.shard_tag(0) == "{presence:0:23}"

    def test_a_shard_outside_the_count_is_refused(self) -> None:
        with pytest.raises(ValueError):
            shards.shard_tag(64)


class TestLayoutCache:
    """The shard count and prefix are cached (the hot path hashes every heartbeat's user and
    rooms); a changed setting must still take effect at once, and go back after."""

    def test_a_changed_shard_count_rehashes_at_once_and_back(self) -> None:
        assert shards.shard_count() == 64
        with override_settings(PRESENCE_SHARDS=4):
            assert shards.shard_count() == 4
            assert {shards.user_shard(uid) for uid in range(100)} == {0, 1, 2, 3}
            assert store.keys(3).tag == shards.shard_tag(3)
        assert shards.shard_count() == 64
        assert max(shards.user_shard(uid) for uid in range(1000)) > 4

    def test_a_changed_prefix_renames_the_keys_at_once_and_back(self) -> None:
        before = store.keys(0).conns
        with override_settings(PRESENCE_KEY_PREFIX="other"):
            assert store.keys(0).conns.startswith("{other:0:")
        assert store.keys(0).conns == before


class TestJumpHash:
    def test_every_bucket_is_used_and_keys_stay_in_range(self) -> None:
        seen = Counter(shards.jump_hash(k, 5) for k in range(5000))
        assert set(seen) == set(range(5))
        assert min(seen.values()) > 800

    def test_a_new_bucket_only_takes_keys(self) -> None:
        # Consistency: going from 3 to 4 buckets moves keys only into bucket 3, about 1/4.
        moved = [k for k in range(4000) if shards.jump_hash(k, 3) != shards.jump_hash(k, 4)]
        assert all(shards.jump_hash(k, 4) == 3 for k in moved)
        assert 800 < len(moved) < 1200

    def test_known_values(self) -> None:
        # Fixed answers: every process (and a future version) must map shards the same way.
        assert [shards.jump_hash(k, 3) for k in range(10)] == [0, 0, 0, 2, 1, 1, 2, 0, 0, 2]
        assert shards.jump_hash(0, 1) == 0

    def test_no_buckets_is_refused(self) -> None:
        with pytest.raises(ValueError):
            shards.jump_hash(1, 0)
