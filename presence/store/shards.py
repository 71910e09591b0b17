"""Logical shards: which shard a user, a room or an address lives on, and each shard's tag.

Pure functions, no Redis. The presence store is cut into ``PRESENCE_SHARDS`` logical shards
(presence/conf.py); a user's keys live on the user's shard, a room's on the room's shard
(presence/store/keys.py). Each shard's keys carry one hash tag, chosen so that the tags of
N shards fall into N equal, consecutive ranges of Redis Cluster's 16384 slots, in order:
``redis-cli --cluster create`` gives each node an equal contiguous slot range, so each node
then holds N / nodes shards (docs/operations.md). Independent primaries
(PRESENCE_REDIS_SHARD_URLS) take shards by :func:`jump_hash` instead.

WARNING: changing PRESENCE_SHARDS or PRESENCE_KEY_PREFIX moves every user and room to
other keys: it is a migration (docs/operations.md), never a live setting change.
"""

from __future__ import annotations

import zlib
from functools import cache, lru_cache
from typing import Any

from django.core.signals import setting_changed
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from presence.conf import app_settings

# The salt search gives up after this many tries; at 1/N odds per try, 64 shards need about
# 64 tries (a shard count up to 16384 would need 16384 on average: still far below this).
MAX_SALT = 1 << 20


# Settings that move keys: the layout caches below are dropped when one of them changes
# (override_settings and pytest-django's ``settings`` send ``setting_changed``).
LAYOUT_SETTINGS = frozenset({"PRESENCE_SHARDS", "PRESENCE_KEY_PREFIX"})


@cache
def shard_count() -> int:
    """The number of logical shards (PRESENCE_SHARDS). Cached: every heartbeat hashes its user
    and rooms, and a Django settings read costs more than the hash; a changed setting drops
    the cache (:func:`_layout_changed`)."""
    return max(1, app_settings.SHARDS)


@cache
def key_prefix() -> str:
    """PRESENCE_KEY_PREFIX, cached as :func:`shard_count` is."""
    return app_settings.KEY_PREFIX


def _layout_changed(*, setting: str, **_: Any) -> None:
    if setting in LAYOUT_SETTINGS:
        shard_count.cache_clear()
        key_prefix.cache_clear()


setting_changed.connect(_layout_changed)


def _hash_shard(kind: str, name: object) -> int:
    # crc32 runs in C; the kind prefix keeps user 7 and room "7" from being tied together.
    return zlib.crc32(f"{kind}:{name}".encode()) % shard_count()


def user_shard(uid: int | str) -> int:
    """The shard holding ``uid``'s keys (connections, status, the user's log entries)."""
    return _hash_shard("u", uid)


def room_shard(room: str) -> int:
    """The shard holding ``room``'s keys (members, the room's join/leave log entries)."""
    return _hash_shard("r", room)


def login_shard(login: str) -> int:
    """The shard holding a login session's own revocation mark (the cookie check at a
    handshake knows no user yet; connect.lua reads the copy on the user's shard)."""
    return _hash_shard("l", login or "-")


def ip_shard(ip: str) -> int:
    """The shard holding an address's connect gate (its connections and rate bucket)."""
    return _hash_shard("a", ip or "-")


# Where presence state lives: its "homes". A user's keys are on the user's shard, a room's on
# the room's shard, an address's gate on the address's shard, a login's own revocation mark on
# the login's shard. Store paths name a key's home with these (what a shard holds), the hash
# functions above say how a name maps to a shard; they are the same mapping.
user_home = user_shard
room_home = room_shard
ip_home = ip_shard
login_home = login_shard


def slot_range(shard: int, shards: int) -> tuple[int, int]:
    """Cluster slots [first, last] of slot bucket ``shard`` of ``shards`` equal buckets."""
    first = shard * REDIS_CLUSTER_HASH_SLOTS // shards
    last = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards - 1
    return first, last


@lru_cache(maxsize=4096)
def _tag(prefix: str, shard: int, shards: int) -> str:
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    first, last = slot_range(shard, shards)
    for salt in range(MAX_SALT):
        content = f"{prefix}:{shard}:{salt}"
        if first <= key_slot(content.encode()) <= last:
            return "{" + content + "}"
    raise ValueError(f"no salt puts shard {shard} of {shards} into slots {first}..{last}")


def shard_tag(shard: int) -> str:
    """The hash tag of ``shard``: ``{<prefix>:<shard>:<salt>}``, with the first salt whose
    Cluster slot lies in slot bucket ``shard`` of ``shard_count()`` equal buckets
    (deterministic: every process finds the same salt; cached)."""
    return _tag(key_prefix(), shard, shard_count())


def shard_slot(shard: int) -> int:
    """The Cluster slot of ``shard``'s keys."""
    return key_slot(shard_tag(shard)[1:-1].encode())


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach, 2014): the bucket of ``key`` in 0..buckets-1.

    Going from n to n + 1 buckets moves only 1/(n + 1) of the keys, all to the new bucket:
    adding a shard URL moves the fewest logical shards.
    """
    if buckets < 1:
        raise ValueError("jump_hash needs at least one bucket")
    key &= 0xFFFFFFFFFFFFFFFF
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def all_shards() -> range:
    """Every logical shard, in order."""
    return range(shard_count())
