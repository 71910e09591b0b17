"""Where the store keeps what a test reads: each user's, room's and address's keys on its
home shard (presence/store/shards.py), never one fixed shard.

Tests read keys through these, so they hold whichever shard a name hashes to:
``user_keys(7).conn("c1")`` is connection c1 of user 7 (a connection's keys live on its
user's shard), ``room_keys("lobby").room("lobby")`` the room's members.
"""

from __future__ import annotations

import redis

from presence import store
from presence.store.keys import Keys


def user_keys(uid: int | str) -> Keys:
    """The keys of ``uid``'s home shard (its connections, status, holds, the global index)."""
    return store.keys(store.user_home(uid))


def room_keys(room: str) -> Keys:
    """The keys of ``room``'s home shard (its members and the room's index)."""
    return store.keys(store.room_home(room))


def addr_keys(ip: str) -> Keys:
    """The keys of the shard holding ``ip``'s connect gate."""
    return store.keys(store.ip_home(ip))


def every_shard() -> list[Keys]:
    """The keys of every shard, in order."""
    return [store.keys(shard) for shard in store.all_shards()]


def conn_exp(r: redis.Redis, cid: str) -> float | None:
    """The expiry (ms) of connection ``cid`` in its shard's index of connections, wherever it
    is (None when no shard lists it)."""
    pipe = r.pipeline(transaction=False)
    for k in every_shard():
        pipe.zscore(k.conns, cid)
    found = [score for score in pipe.execute() if score is not None]
    assert len(found) <= 1, f"connection {cid} listed on {len(found)} shards"
    return float(found[0]) if found else None


def online_uids(r: redis.Redis) -> set[str]:
    """Every user listed in some shard's global index (expired entries included)."""
    pipe = r.pipeline(transaction=False)
    for k in every_shard():
        pipe.zrange(k.users, 0, -1)
    return {str(uid) for part in pipe.execute() for uid in part}


def housemate(uid: int) -> int:
    """The smallest uid above ``uid`` with the same home shard: for a test whose meaning needs
    two users on one shard (a shard's counters and peaks, its index of users)."""
    home = store.user_home(uid)
    other = uid + 1
    while store.user_home(other) != home:
        other += 1
    return other


def room_beside(room: str) -> str:
    """The first room ``<room>-<n>`` with ``room``'s home shard: for a test whose meaning needs
    two rooms of one shard (one shard's index of rooms, read in batches)."""
    home = store.room_home(room)
    n = 1
    while store.room_home(f"{room}-{n}") != home:
        n += 1
    return f"{room}-{n}"


def end_swept(conns: list[store.ConnRef], *, now: int | None = None) -> list[store.EndResult]:
    """end.lua in 'swept' mode as a sweep of the connections' home runs it (one user's
    shard: a sweep ends the connections of the shard it claimed them on)."""
    (shard,) = {store.user_home(c.uid) for c in conns}
    return store.end_swept_connections(conns, now=now, shard=shard)


def stat_total(r: redis.Redis, name: str) -> int:
    """Counter ``name`` of the live stats hashes summed over every shard (each script counts
    on the shard it ran on: a connection's end on its user's shard)."""
    pipe = r.pipeline(transaction=False)
    for k in every_shard():
        pipe.hget(k.stats, name)
    return sum(int(value or 0) for value in pipe.execute())


def listed_conns(r: redis.Redis) -> int:
    """Connections listed in every shard's index of connections together (expired ones too)."""
    pipe = r.pipeline(transaction=False)
    for k in every_shard():
        pipe.zcard(k.conns)
    return sum(int(n) for n in pipe.execute())
