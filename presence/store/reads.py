"""Who is online: listings and one user's presence, read at a position-free moment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis

from presence.conf import app_settings
from presence.protocol.types import PresenceUser
from presence.store.clients import now_ms
from presence.store.keys import keys


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


def format_users(uids: Sequence[str], details: Sequence[Any]) -> list[PresenceUser]:
    users: list[PresenceUser] = []
    now = now_ms()
    for i, uid in enumerate(uids):
        (username, status, held), connections = details[2 * i], details[2 * i + 1]
        if int(connections) == 0 and not is_held(held, now):
            continue  # lapsed between the two round trips
        users.append(
            {
                "id": int(uid),
                "username": username or "",
                "status": status or "online",
                "connections": int(connections),
            }
        )
    return users


async def alist_online(
    client: aredis.Redis, room: str | None = None, *, limit: int | None = None
) -> tuple[int, list[PresenceUser]]:
    """(count, users) online everywhere or in ``room``; two round trips."""
    now, limit = now_ms(), limit or app_settings.LIST_LIMIT
    pipe = client.pipeline(transaction=False)
    queue_listing(pipe, plan_index(room), now, limit)
    count, uids = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, uids, now)
    users = format_users(uids, await pipe.execute()) if uids else []
    return int(count), users


def list_online(
    client: redis.Redis, room: str | None = None, *, limit: int | None = None
) -> tuple[int, list[PresenceUser]]:
    """Sync twin of :func:`alist_online` for views and tasks."""
    now, limit = now_ms(), limit or app_settings.LIST_LIMIT
    pipe = client.pipeline(transaction=False)
    queue_listing(pipe, plan_index(room), now, limit)
    count, uids = pipe.execute()
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, uids, now)
    users = format_users(uids, pipe.execute()) if uids else []
    return int(count), users


async def auser_presence(client: aredis.Redis, uid: int) -> tuple[str | None, int]:
    """(status, live connection count) of one user; status is None when offline."""
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, [str(uid)], now_ms())
    (_username, status, held), connections = await pipe.execute()
    if int(connections) == 0 and not is_held(held):
        return None, 0
    return status or "online", int(connections)


def user_presence(client: redis.Redis, uid: int) -> tuple[str | None, int]:
    """(status, live connection count) of one user; status is None when offline."""
    pipe = client.pipeline(transaction=False)
    queue_details(pipe, [str(uid)], now_ms())
    (_username, status, held), connections = pipe.execute()
    if int(connections) == 0 and not is_held(held):
        return None, 0
    return status or "online", int(connections)
