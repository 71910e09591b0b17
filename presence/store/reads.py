"""Who is online: listings and one user's presence, read at a position-free moment."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from presence.conf import app_settings
from presence.protocol.types import PresenceUser
from presence.store.clients import now_ms
from presence.store.keys import keys
from presence.store.shards import all_shards, shard_count
from presence.store.topology import aclient_for, client_for, split_by_node


def plan_index(room: str | None) -> str:
    k = keys()
    return k.room(room) if room else k.users


def queue_listing(pipe: Any, index: str, now: int, limit: int) -> None:
    low = f"({now}"
    pipe.zcount(index, low, "+inf")
    pipe.zrangebyscore(index, low, "+inf", start=0, num=limit)


def queue_details(pipe: Any, uids: Sequence[str], now: int) -> None:
    k = keys()
    for uid in uids:
        # "held": the user's leave is held for the grace window (end.lua): still present.
        pipe.hmget(k.user(uid), "username", "status", "held")
        pipe.zcount(k.user_conns(uid), f"({now}", "+inf")


def is_held(held: Any, now: int | None = None) -> bool:
    """Whether a user hash's ``held`` field (the due time of a held leave) is still ahead."""
    return held is not None and int(held) > (now or now_ms())


def present_user(uid: str, detail: Any, connections: Any, now: int) -> PresenceUser | None:
    """One listed user from their ``HMGET username status held`` and live connection count,
    or None when they lapsed between the listing and this read (and no leave is held)."""
    username, status, held = detail
    if int(connections) == 0 and not is_held(held, now):
        return None
    return {
        "id": int(uid),
        "username": username or "",
        "status": status or "online",
        "connections": int(connections),
    }


def format_users(uids: Sequence[str], details: Sequence[Any]) -> list[PresenceUser]:
    """The users of one pipelined details read (:func:`queue_details`), lapsed ones left out."""
    now = now_ms()
    found = (
        present_user(uid, details[2 * i], details[2 * i + 1], now) for i, uid in enumerate(uids)
    )
    return [user for user in found if user is not None]


# --------------------------------------------------------------------------- across shards
# Everyone online is the union of every shard's ``users`` index: counts are the sum of the
# shards' ZCOUNTs (exact), listings walk the shards in order. Each step is one pipeline per
# node (topology.groups), run on all nodes at once; a user's details are read on the shard
# whose index listed them (a user's keys live with their index entry).


def _queue_counts(pipe: Any, shards: Sequence[int], now: int) -> None:
    for shard in shards:
        pipe.zcount(keys(shard).users, f"({now}", "+inf")


def _pick_ranges(counts: Sequence[int], skip: int, limit: int) -> list[tuple[int, int, int]]:
    """(shard, offset, how many) to read for members ``skip`` .. ``skip + limit`` of the
    shards' indexes laid end to end."""
    ranges = []
    for shard, count in enumerate(counts):
        if limit <= 0:
            break
        if skip >= count:
            skip -= count
            continue
        take = min(limit, count - skip)
        ranges.append((shard, skip, take))
        skip, limit = 0, limit - take
    return ranges


def _queue_details_on(pipe: Any, found: Sequence[tuple[int, str]], now: int) -> None:
    for shard, uid in found:
        k = keys(shard)
        pipe.hmget(k.user(uid), "username", "status", "held")
        pipe.zcount(k.user_conns(uid), f"({now}", "+inf")


async def _afan_out(items: Sequence[Any], shard_of: Any, queue: Any) -> list[Any]:
    """Queue ``queue(pipe, part)`` for the items of each node in one pipeline per node, run
    the nodes at once; the answers in the order of ``items``."""
    by_shard: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_shard.setdefault(shard_of(item), []).append(i)
    parts = split_by_node(sorted(by_shard))
    pipes, orders = [], []
    for part in parts:
        pipe = aclient_for(part[0]).pipeline(transaction=False)
        order = [i for shard in part for i in by_shard[shard]]
        queue(pipe, [items[i] for i in order])
        pipes.append(pipe)
        orders.append(order)
    answers: list[Any] = [None] * len(items)
    results = await asyncio.gather(*(pipe.execute() for pipe in pipes))
    for order, result in zip(orders, results, strict=True):
        per = len(result) // max(1, len(order))
        for j, i in enumerate(order):
            answers[i] = result[j * per : (j + 1) * per]
    return answers


def _fan_out(items: Sequence[Any], shard_of: Any, queue: Any) -> list[Any]:
    """Sync twin of :func:`_afan_out` (nodes one after the other)."""
    by_shard: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_shard.setdefault(shard_of(item), []).append(i)
    answers: list[Any] = [None] * len(items)
    for part in split_by_node(sorted(by_shard)):
        pipe = client_for(part[0]).pipeline(transaction=False)
        order = [i for shard in part for i in by_shard[shard]]
        queue(pipe, [items[i] for i in order])
        result = pipe.execute()
        per = len(result) // max(1, len(order))
        for j, i in enumerate(order):
            answers[i] = result[j * per : (j + 1) * per]
    return answers


def _users_from(found: Sequence[tuple[int, str]], details: Sequence[Any]) -> list[PresenceUser]:
    flat = [value for pair in details for value in pair]
    return format_users([uid for _, uid in found], flat)


def _queue_range(pipe: Any, ranges: Sequence[tuple[int, int, int]], now: int) -> None:
    for shard, skip, take in ranges:
        pipe.zrangebyscore(keys(shard).users, f"({now}", "+inf", start=skip, num=take)


def _found(ranges: Sequence[tuple[int, int, int]], answers: Sequence[Any]) -> list[tuple[int, str]]:
    return [(r[0], str(uid)) for r, (uids,) in zip(ranges, answers, strict=True) for uid in uids]


async def _aroom_listing(room: str, limit: int) -> tuple[int, list[PresenceUser]]:
    shard = 0  # the room's shard (rooms are not placed by room_shard yet: docs/presence.md)
    client, now = aclient_for(shard), now_ms()
    pipe = client.pipeline(transaction=False)
    queue_listing(pipe, plan_index(room), now, limit)
    count, uids = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, uids, now)
    users = format_users(uids, await pipe.execute()) if uids else []
    return int(count), users


async def alist_online(
    room: str | None = None, *, limit: int | None = None
) -> tuple[int, list[PresenceUser]]:
    """(count, users) online everywhere or in ``room``: the first ``limit`` users.

    Everywhere: three steps of one pipeline per node (every shard's count; the ranges that
    hold the first ``limit``; their details). A room: two round trips on its shard.
    """
    limit = limit or app_settings.LIST_LIMIT
    if room:
        return await _aroom_listing(room, limit)
    now, shards = now_ms(), list(all_shards())
    counts = [
        int(c)
        for (c,) in await _afan_out(
            shards, lambda s: s, lambda p, part: _queue_counts(p, part, now)
        )
    ]
    ranges = _pick_ranges(counts, 0, limit)
    answers = await _afan_out(ranges, lambda r: r[0], lambda p, part: _queue_range(p, part, now))
    found = _found(ranges, answers)
    details = await _afan_out(
        found, lambda f: f[0], lambda p, part: _queue_details_on(p, part, now)
    )
    return sum(counts), _users_from(found, details)


def list_online(
    room: str | None = None, *, limit: int | None = None
) -> tuple[int, list[PresenceUser]]:
    """Sync twin of :func:`alist_online` for views and tasks."""
    limit = limit or app_settings.LIST_LIMIT
    now = now_ms()
    if room:
        client = client_for(0)  # the room's shard, as _aroom_listing
        pipe = client.pipeline(transaction=False)
        queue_listing(pipe, plan_index(room), now, limit)
        count, uids = pipe.execute()
        pipe = client.pipeline(transaction=False)
        queue_details(pipe, uids, now)
        return int(count), format_users(uids, pipe.execute()) if uids else []
    shards = list(all_shards())
    counts = [
        int(c)
        for (c,) in _fan_out(shards, lambda s: s, lambda p, part: _queue_counts(p, part, now))
    ]
    ranges = _pick_ranges(counts, 0, limit)
    answers = _fan_out(ranges, lambda r: r[0], lambda p, part: _queue_range(p, part, now))
    found = _found(ranges, answers)
    details = _fan_out(found, lambda f: f[0], lambda p, part: _queue_details_on(p, part, now))
    return sum(counts), _users_from(found, details)


def decode_cursor(cursor: int) -> tuple[int, int]:
    """A global listing's cursor -> (shard, that shard's ZSCAN cursor)."""
    return cursor % shard_count(), cursor // shard_count()


def encode_cursor(shard: int, scan: int) -> int:
    """(shard, ZSCAN cursor) -> the opaque cursor handed to clients (0 = done, or start)."""
    return scan * shard_count() + shard


async def alist_online_page(
    room: str | None, cursor: int, limit: int
) -> tuple[int, list[PresenceUser], int]:
    """One page of a scope's members: (exact count, users, next cursor; 0 = done).

    A room: ZSCAN of its index (one shard). Everywhere: the cursor names a shard and a ZSCAN
    cursor in its index (:func:`encode_cursor`); the shards are walked in order, so a member
    online throughout is returned at least once whatever the heartbeats do to the scores.
    A page may hold fewer than ``limit`` users (or none) while the cursor is not 0.
    """
    now = now_ms()
    if room:
        client = aclient_for(0)  # the room's shard, as _aroom_listing
        pipe = client.pipeline(transaction=False)
        pipe.zcount(plan_index(room), f"({now}", "+inf")
        pipe.zscan(plan_index(room), cursor, count=limit)
        count, (next_scan, members) = await pipe.execute()
        uids = [str(uid) for uid, score in members if score > now]
        pipe = client.pipeline(transaction=False)
        queue_details(pipe, uids, now)
        users = format_users(uids, await pipe.execute()) if uids else []
        return int(count), users, int(next_scan)
    shard, scan = decode_cursor(cursor)
    shards = list(all_shards())
    counts = [
        int(c)
        for (c,) in await _afan_out(
            shards, lambda s: s, lambda p, part: _queue_counts(p, part, now)
        )
    ]
    # Empty shards are passed over here: a page never stops on one.
    while scan == 0 and shard < len(shards) and counts[shard] == 0:
        shard += 1
    if shard >= len(shards):
        return sum(counts), [], 0
    pipe = aclient_for(shard).pipeline(transaction=False)
    pipe.zscan(keys(shard).users, scan, count=limit)
    [(next_scan, members)] = await pipe.execute()
    found = [(shard, str(uid)) for uid, score in members if score > now]
    details = await _afan_out(
        found, lambda f: f[0], lambda p, part: _queue_details_on(p, part, now)
    )
    if int(next_scan):
        after = encode_cursor(shard, int(next_scan))
    else:
        after = shard + 1 if shard + 1 < len(shards) else 0
    return sum(counts), _users_from(found, details), after


async def auser_presence(uid: int) -> tuple[str | None, int]:
    """(status, live connection count) of one user; status is None when offline."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, [str(uid)], now_ms())
    (_username, status, held), connections = await pipe.execute()
    if int(connections) == 0 and not is_held(held):
        return None, 0
    return status or "online", int(connections)


def user_presence(uid: int) -> tuple[str | None, int]:
    """(status, live connection count) of one user; status is None when offline."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, [str(uid)], now_ms())
    (_username, status, held), connections = pipe.execute()
    if int(connections) == 0 and not is_held(held):
        return None, 0
    return status or "online", int(connections)
