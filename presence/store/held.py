"""The grace window's held leaves: which are due, and releasing them (release_held.lua).

end.lua holds the leaves of a closed last connection for PRESENCE_LEAVE_GRACE
(docs/presence.md); whoever comes first after they are due releases them: the process
that closed the socket (a timer), or the sweep (any process died meanwhile). Releasing is
two steps: read the due entries (one ``ZRANGEBYSCORE``), then one script with every key
they need declared, which claims each entry by removing it, so each leave is logged once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from presence.store.clients import log_maxlen, now_ms
from presence.store.keys import keys
from presence.store.scripts import script
from presence.store.shards import all_shards, user_home
from presence.store.topology import aclient_for, client_for

# WARNING: bounds one script call. A mass disconnect (a deploy) holds one leave per user and
# per room; they are released in batches of this many, the rest by the next call.
RELEASE_BATCH = 500


def _plan_release(
    shard: int, members: Sequence[str], now: int, force: bool
) -> tuple[list[str], list[Any]]:
    k = keys(shard)
    ks = [k.held, k.held_why, k.users, k.events]
    args: list[Any] = [now, log_maxlen(), "1" if force else "0", len(members)]
    # Rooms first, then the user's: the order end.lua logs a close's leaves in.
    for member in sorted(members, key=lambda m: "|" not in m):
        uid, _, room = member.partition("|")
        if room:
            ks += [k.user(uid), k.room(room), k.room_user(room, uid)]
        else:
            ks += [k.user(uid), k.user_conns(uid), k.user(uid)]
        args += [member, uid, room]
    return ks, args


def release_due(*, now: int | None = None, shard: int) -> tuple[int, int]:
    """Log ``shard``'s held leaves that are due, at most RELEASE_BATCH: (entries found due,
    leaves logged); fewer found than RELEASE_BATCH means none is left. A user's holds live
    on the user's shard, a room's on the room's shard (end.lua, end_rooms.lua): the sweep
    of each shard releases that shard's."""
    client, k = client_for(shard), keys(shard)
    now = now or now_ms()
    members: Any = client.zrangebyscore(k.held, "-inf", now, start=0, num=RELEASE_BATCH)
    if not members:
        return 0, 0
    ks, args = _plan_release(shard, [str(m) for m in members], now, force=False)
    return len(members), int(script("release_held").run(client, ks, args))


async def arelease_due(*, now: int | None = None, shards: Iterable[int] = (0,)) -> tuple[int, int]:
    """Log every held leave on ``shards`` that is due by ``now``: (entries found due, leaves
    logged). The closing process's timer calls it for the shards of the users and rooms it
    held leaves for.

    The shards are released side by side and each is drained in batches of RELEASE_BATCH
    (one script call each): after a mass disconnect the leaves are due on every shard at
    once, and shard after shard -- two round trips each, 64 shards -- delayed the last
    user's leave by the whole sequence (docs/presence.md, the grace window).
    """
    now = now or now_ms()
    results = await asyncio.gather(
        *(_adrain_due(shard, now) for shard in sorted(set(shards))), return_exceptions=True
    )
    found = logged = 0
    for result in results:
        if isinstance(result, BaseException):
            raise result  # the others ran to their end; the sweep takes what is left
        found, logged = found + result[0], logged + result[1]
    return found, logged


async def _adrain_due(shard: int, now: int) -> tuple[int, int]:
    client, k = aclient_for(shard), keys(shard)
    found = logged = 0
    while True:
        members = await client.zrangebyscore(k.held, "-inf", now, start=0, num=RELEASE_BATCH)
        if not members:
            return found, logged
        ks, args = _plan_release(shard, [str(m) for m in members], now, force=False)
        found += len(members)
        logged += int(await script("release_held").arun(client, ks, args))
        if len(members) < RELEASE_BATCH:
            return found, logged


def release_user(uid: int, *, now: int | None = None) -> int:
    """Log a user's held leaves now, due or not (a kick, a block: final, never held).

    The user's own hold is on the user's shard; their rooms' holds are on the rooms'
    shards, so every shard's held set is scanned for ``<uid>|*`` (a kick is rare; one
    ZSCAN per shard)."""
    logged, now = 0, now or now_ms()
    for shard in all_shards():
        client, k, members = client_for(shard), keys(shard), []
        patterns = [f"{uid}|*"] + ([str(uid)] if shard == user_home(uid) else [])
        for pattern in patterns:
            members += [str(m) for m, _ in client.zscan_iter(k.held, match=pattern, count=500)]
        if members:
            ks, args = _plan_release(shard, members, now, force=True)
            logged += int(script("release_held").run(client, ks, args))
    return logged
