"""The grace window's held leaves: which are due, and releasing them (release_held.lua).

end.lua holds the leaves of a closed last connection for PRESENCE_LEAVE_GRACE
(docs/presence.md); whoever comes first after they are due releases them: the process
that closed the socket (a timer), or the sweep (any process died meanwhile). Releasing is
two steps: read the due entries (one ``ZRANGEBYSCORE``), then one script with every key
they need declared, which claims each entry by removing it, so each leave is logged once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from presence.store.clients import log_maxlen, now_ms
from presence.store.keys import keys
from presence.store.scripts import script
from presence.store.topology import aclient_for, client_for

# WARNING: bounds one script call. A mass disconnect (a deploy) holds one leave per user and
# per room; they are released in batches of this many, the rest by the next call.
RELEASE_BATCH = 500


def _plan_release(members: Sequence[str], now: int, force: bool) -> tuple[list[str], list[Any]]:
    k = keys()
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


def release_due(*, now: int | None = None) -> tuple[int, int]:
    """Log the held leaves that are due, at most RELEASE_BATCH: (entries found due, leaves
    logged); fewer found than RELEASE_BATCH means none is left."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    now = now or now_ms()
    members: Any = client.zrangebyscore(keys().held, "-inf", now, start=0, num=RELEASE_BATCH)
    if not members:
        return 0, 0
    ks, args = _plan_release([str(m) for m in members], now, force=False)
    return len(members), int(script("release_held").run(client, ks, args))


async def arelease_due(*, now: int | None = None) -> tuple[int, int]:
    """Async twin of :func:`release_due` (the closing process's timer)."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    now = now or now_ms()
    members = await client.zrangebyscore(keys().held, "-inf", now, start=0, num=RELEASE_BATCH)
    if not members:
        return 0, 0
    ks, args = _plan_release([str(m) for m in members], now, force=False)
    return len(members), int(await script("release_held").arun(client, ks, args))


def release_user(uid: int, *, now: int | None = None) -> int:
    """Log a user's held leaves now, due or not (a kick, a block: final, never held)."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    k, members = keys(), []
    for pattern in (str(uid), f"{uid}|*"):
        members += [str(m) for m, _ in client.zscan_iter(k.held, match=pattern, count=500)]
    if not members:
        return 0
    ks, args = _plan_release(members, now or now_ms(), force=True)
    return int(script("release_held").run(client, ks, args))
