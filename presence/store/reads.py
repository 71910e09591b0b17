"""Who is online: listings and one user's presence, read at a position-free moment."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presence.conf import app_settings
from presence.protocol.types import PresenceUser
from presence.store import shards
from presence.store.clients import now_ms
from presence.store.keys import keys
from presence.store.shards import all_shards
from presence.store.topology import aclient_for, client_for, groups, shape, split_by_node


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


def queue_live_counts(pipe: Any, shard: int, now: int) -> None:
    """Queue ``shard``'s users and connections online at ``now`` (two ZCOUNTs, in order)."""
    k = keys(shard)
    pipe.zcount(k.users, f"({now}", "+inf")
    pipe.zcount(k.conns, f"({now}", "+inf")


def live_totals() -> tuple[int, int]:
    """(users, connections) online now over every shard: the sums of the shards' ZCOUNTs,
    one pipeline per node (the stats flush samples them for the global peaks)."""
    now = now_ms()
    users = conns = 0
    for client, part in groups():
        pipe = client.pipeline(transaction=False)
        for shard in part:
            queue_live_counts(pipe, shard, now)
        counts = pipe.execute()
        users += sum(int(n) for n in counts[0::2])
        conns += sum(int(n) for n in counts[1::2])
    return users, conns


def _queue_counts(pipe: Any, shards: Sequence[int], now: int) -> None:
    for shard in shards:
        pipe.zcount(keys(shard).users, f"({now}", "+inf")


def pick_ranges(counts: Sequence[int], skip: int, limit: int) -> list[tuple[int, int, int]]:
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


async def afan_out(items: Sequence[Any], shard_of: Any, queue: Any) -> list[Any]:
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


def fan_out(
    items: Sequence[Any], shard_of: Any, queue: Any, *, snapshot: bool = False
) -> list[Any]:
    """Sync twin of :func:`afan_out` (nodes one after the other). ``snapshot``: each node's
    pipeline is a MULTI (a consistent read of that node; not on a Cluster, whose
    transactions must stay in one slot)."""
    transaction = snapshot and shape() != "cluster"
    by_shard: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_shard.setdefault(shard_of(item), []).append(i)
    answers: list[Any] = [None] * len(items)
    for part in split_by_node(sorted(by_shard)):
        pipe = client_for(part[0]).pipeline(transaction=transaction)
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


def _room_found(uids: Sequence[Any]) -> list[tuple[int, str]]:
    # A room's members are listed on the room's shard, their details live on their own.
    return [(shards.user_home(uid), str(uid)) for uid in uids]


async def _aroom_listing(room: str, limit: int) -> tuple[int, list[PresenceUser]]:
    home, now = shards.room_home(room), now_ms()
    pipe = aclient_for(home).pipeline(transaction=False)
    queue_listing(pipe, keys(home).room(room), now, limit)
    count, uids = await pipe.execute()
    found = _room_found(uids)
    details = await afan_out(found, lambda f: f[0], lambda p, part: _queue_details_on(p, part, now))
    return int(count), _users_from(found, details)


async def alist_online(
    room: str | None = None, *, limit: int | None = None
) -> tuple[int, list[PresenceUser]]:
    """(count, users) online everywhere or in ``room``: the first ``limit`` users.

    Everywhere: three steps of one pipeline per node (every shard's count; the ranges that
    hold the first ``limit``; their details). A room: its count and first members on the
    room's shard, then their details on their users' shards (one pipeline per node).
    """
    limit = limit or app_settings.LIST_LIMIT
    if room:
        return await _aroom_listing(room, limit)
    now, every = now_ms(), list(all_shards())
    counts = [
        int(c)
        for (c,) in await afan_out(every, lambda s: s, lambda p, part: _queue_counts(p, part, now))
    ]
    ranges = pick_ranges(counts, 0, limit)
    answers = await afan_out(ranges, lambda r: r[0], lambda p, part: _queue_range(p, part, now))
    found = _found(ranges, answers)
    details = await afan_out(found, lambda f: f[0], lambda p, part: _queue_details_on(p, part, now))
    return sum(counts), _users_from(found, details)


def list_online(
    room: str | None = None, *, limit: int | None = None
) -> tuple[int, list[PresenceUser]]:
    """Sync twin of :func:`alist_online` for views and tasks."""
    limit = limit or app_settings.LIST_LIMIT
    now = now_ms()
    if room:
        home = shards.room_home(room)
        pipe = client_for(home).pipeline(transaction=False)
        queue_listing(pipe, keys(home).room(room), now, limit)
        count, uids = pipe.execute()
        found = _room_found(uids)
        details = fan_out(found, lambda f: f[0], lambda p, part: _queue_details_on(p, part, now))
        return int(count), _users_from(found, details)
    every = list(all_shards())
    counts = [
        int(c) for (c,) in fan_out(every, lambda s: s, lambda p, part: _queue_counts(p, part, now))
    ]
    ranges = pick_ranges(counts, 0, limit)
    answers = fan_out(ranges, lambda r: r[0], lambda p, part: _queue_range(p, part, now))
    found = _found(ranges, answers)
    details = fan_out(found, lambda f: f[0], lambda p, part: _queue_details_on(p, part, now))
    return sum(counts), _users_from(found, details)


# --------------------------------------------------------------------------- cursor pages
# A walk lists a scope's indexes one after the other: everyone = every shard's ``users``
# index in shard order, a room = its one index on the room's shard. Its position is
# (index, ZSCAN cursor in it, ``after``): ``after`` is set when a page ended inside one ZSCAN
# step that returned the whole index (a small index, ZSCAN's one-step reply): the members
# of that index up to uid ``after`` were listed, in uid order, the rest were not. A step that
# returned part of a large index is never cut (its next step might not see the same members),
# so such a page may hold a few more than ``limit`` (ZSCAN returns whole hash buckets).
#
# Exactly once: a user online during the whole walk is in their index all along; ZSCAN
# returns every member present for a whole scan, each once unless the index's hash table
# shrinks between two steps (Redis resizes it down when under 10 % full: it may then repeat
# members, never skip one); the uid bound lists each member of a cut step on one side of it.
# Users who come or go during the walk are listed once or not at all (docs/protocol.md).

SCAN_BITS = 64  # a ZSCAN cursor is an unsigned 64-bit integer
SCAN_MASK = (1 << SCAN_BITS) - 1
# ZSCAN steps of one page (one pipeline per node each) before it returns what it has: one
# step fills a page unless lapsed members (not swept yet) thinned it out.
SCAN_ROUNDS = 3
# WARNING: bounds one ZSCAN step's COUNT at this many times the users a page still needs,
# however many lapsed members (not swept yet) an index holds.
MAX_HEADROOM = 4.0


@dataclass(frozen=True)
class WalkPosition:
    """Where a cursor resumes: index ``part`` of the walk, its ZSCAN cursor ``scan``, and the
    uid bound ``after`` inside a cut whole-index step (None: no bound)."""

    part: int
    scan: int = 0
    after: int | None = None


def encode_cursor(position: WalkPosition, parts: int) -> int:
    """A position -> the opaque decimal cursor handed to clients (0: start; as the reply's
    cursor: done). Positions without ``after`` encode as the ZSCAN-only cursors did."""
    bound = 0 if position.after is None else position.after + 1
    return ((bound << SCAN_BITS) | position.scan) * parts + position.part


def decode_cursor(cursor: int, parts: int) -> WalkPosition:
    """A client's cursor -> the position of a walk over ``parts`` indexes."""
    rest = cursor // parts
    bound = rest >> SCAN_BITS
    return WalkPosition(cursor % parts, rest & SCAN_MASK, bound - 1 if bound else None)


def _plan(counts: Sequence[int], at: WalkPosition, need: int) -> list[int]:
    """The indexes to scan next: ``at``'s and the following non-empty ones until their live
    members cover ``need`` (the current index's rest is unknown mid-way: counted as 0)."""
    plan, covered = [], 0
    for part in range(at.part, len(counts)):
        if covered >= need:
            break
        if counts[part] == 0:
            continue
        plan.append(part)
        fresh = part != at.part or (at.scan == 0 and at.after is None)
        covered += counts[part] if fresh else 0
    return plan


def _take(
    members: Sequence[tuple[Any, float]], start: WalkPosition, next_scan: int, now: int, need: int
) -> tuple[list[int], WalkPosition | None]:
    """The live uids one ZSCAN step of ``start``'s index adds to a page, and where that index
    resumes (None: it is done)."""
    after = start.after
    live = sorted(
        int(uid) for uid, score in members if score > now and (after is None or int(uid) > after)
    )
    if start.scan == 0 and next_scan == 0 and len(live) > need:
        # The whole index in one step: cut it in uid order, resume past the last one listed.
        return live[:need], WalkPosition(start.part, 0, live[need - 1])
    if next_scan:
        return live, WalkPosition(start.part, next_scan, after)
    return live, None


async def _awalk(
    indexes: Sequence[tuple[int, str]],
    counts: Sequence[int],
    at: WalkPosition,
    limit: int,
    *,
    headroom: float = 1.0,
) -> tuple[list[tuple[int, int]], WalkPosition | None]:
    """Up to ``limit`` (part, uid) from ``at`` on, filling across the following indexes in
    one pipeline per node per step; and the position after them (None: the walk ended).
    ``headroom``: members per live member in the indexes (ZSCAN's COUNT is scaled by it)."""
    now = now_ms()
    taken: list[tuple[int, int]] = []
    position: WalkPosition | None = at
    for _ in range(SCAN_ROUNDS):
        if position is None or len(taken) >= limit:
            break
        plan = _plan(counts, position, limit - len(taken))
        if not plan:
            position = None
            break
        starts = [position if part == position.part else WalkPosition(part) for part in plan]
        need = limit - len(taken)
        # Lapsed members are spread unevenly: sqrt(need) more keeps most pages to one step.
        count = math.ceil(need * min(headroom, MAX_HEADROOM) + math.sqrt(need))

        def queue(pipe: Any, part: Sequence[WalkPosition], count: int = count) -> None:
            for start in part:
                pipe.zscan(indexes[start.part][1], start.scan, count=count)

        steps = await afan_out(starts, lambda s: indexes[s.part][0], queue)
        for start, [(next_scan, members)] in zip(starts, steps, strict=True):
            need = limit - len(taken)
            if need <= 0:
                position = start
                break
            uids, rest = _take(members, start, int(next_scan), now, need)
            taken += [(start.part, uid) for uid in uids]
            if rest is not None:
                position = rest
                break
            position = WalkPosition(start.part + 1) if start.part + 1 < len(indexes) else None
    # Trailing indexes with nobody online end the walk here, not with an empty page.
    while position is not None and counts[position.part] == 0:
        position = WalkPosition(position.part + 1) if position.part + 1 < len(indexes) else None
    return taken, position


async def alist_online_page(
    room: str | None, cursor: int, limit: int
) -> tuple[int, list[PresenceUser], int]:
    """One page of a scope's members: (exact count, users, next cursor; 0 = done).

    Everyone: every shard's index in shard order; a room: its index on the room's shard. A
    page takes from the cursor's index and continues into the following ones until it holds
    ``limit`` users (at most a few more, see the notes above) or the walk ends. Three steps
    of one pipeline per node each: every index's count, the ZSCAN steps, the users' details.
    """
    now = now_ms()
    if room:
        home = shards.room_home(room)
        indexes = [(home, keys(home).room(room))]
    else:
        indexes = [(shard, keys(shard).users) for shard in all_shards()]
    sizes = await afan_out(indexes, lambda i: i[0], lambda p, part: _queue_zcounts(p, part, now))
    counts = [int(live) for live, _ in sizes]
    # ZSCAN returns lapsed members too: ask each step for enough to still fill the page.
    stale = max(int(card) / max(1, int(live)) for live, card in sizes) if sizes else 1.0
    start = decode_cursor(cursor, len(indexes))
    taken, position = await _awalk(indexes, counts, start, limit, headroom=stale)
    # The details: a room's members on their users' shards, everyone's on their index's.
    found = [(shards.user_home(uid) if room else indexes[part][0], str(uid)) for part, uid in taken]
    details = await afan_out(found, lambda f: f[0], lambda p, part: _queue_details_on(p, part, now))
    after = encode_cursor(position, len(indexes)) if position is not None else 0
    return sum(counts), _users_from(found, details), after


def _queue_zcounts(pipe: Any, indexes: Sequence[tuple[int, str]], now: int) -> None:
    for _shard, index in indexes:
        pipe.zcount(index, f"({now}", "+inf")
        pipe.zcard(index)  # with lapsed members not swept yet: the ZSCAN COUNT's headroom


async def auser_presence(uid: int) -> tuple[str | None, int]:
    """(status, live connection count) of one user; status is None when offline."""
    home = shards.user_home(uid)
    pipe = aclient_for(home).pipeline(transaction=False)
    _queue_details_on(pipe, [(home, str(uid))], now_ms())
    (_username, status, held), connections = await pipe.execute()
    if int(connections) == 0 and not is_held(held):
        return None, 0
    return status or "online", int(connections)


def user_presence(uid: int) -> tuple[str | None, int]:
    """(status, live connection count) of one user; status is None when offline."""
    home = shards.user_home(uid)
    pipe = client_for(home).pipeline(transaction=False)
    _queue_details_on(pipe, [(home, str(uid))], now_ms())
    (_username, status, held), connections = pipe.execute()
    if int(connections) == 0 and not is_held(held):
        return None, 0
    return status or "online", int(connections)
