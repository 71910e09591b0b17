"""What a connection says or asks about users beyond rooms: activity and the watch list."""

from __future__ import annotations

from typing import Annotated, Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from pydantic import BaseModel, Field

from presence import store
from presence.access.authz import arefused_watches
from presence.actions import connections as actions
from presence.conf import app_settings
from presence.handlers.context import HandlerContext
from presence.handlers.registry import NO_REPLY, FrameError, registry
from sessions_app.queries import last_seen_by_user

# Bounds the parse of one frame; PRESENCE_MAX_WATCHED (checked after it) is the real cap.
WATCH_PARSE_MAX = 10_000


@registry.handler("activity", core=True, version="1")
async def activity(ctx: HandlerContext, data: dict[str, Any]) -> Any:
    """The user is at the keyboard: move ``last_active`` (throttled, batched with heartbeats).

    Answered only when the frame has an ``id`` (``{"recorded": false}`` when throttled):
    clients send it on input, and an unasked-for reply per keystroke burst is waste.
    """
    recorded = actions.do_record_activity(ctx.user_id)
    return NO_REPLY if ctx.frame_id is None else {"recorded": recorded}


class WatchPayload(BaseModel):
    users: list[Annotated[int, Field(ge=1, strict=True)]] = Field(max_length=WATCH_PARSE_MAX)


def _users_and_last_seen(uids: list[int]) -> tuple[dict[int, str], dict[int, Any]]:
    """uid -> username of the ids that are users, and their last moment seen (two queries)."""
    users = get_user_model()._default_manager.filter(pk__in=uids)
    names = {user.pk: user.get_username() for user in users}
    return names, last_seen_by_user(names)


@registry.handler("presence.watch", core=True, version="1", payload=WatchPayload)
async def presence_watch(ctx: HandlerContext, data: WatchPayload) -> Any:
    """Replace this connection's watch list; the reply holds each watched user's presence.

    Afterwards the connection gets ``presence.watch`` frames (online, offline, status) for
    those users only, from its process's log reader (presence/live/watches.py). Ids of no
    user are left out of the reply and not watched. The watched users learn nothing.
    """
    uids = list(dict.fromkeys(data.users))
    if len(uids) > app_settings.MAX_WATCHED:
        raise FrameError(
            "too_many_watched",
            f"a connection may watch at most {app_settings.MAX_WATCHED} users",
        )
    consumer = ctx.consumer
    reader = consumer.reader
    if reader is None:
        raise FrameError("unavailable", "the presence event log is not being read; retry")
    refused = await arefused_watches(ctx.user, uids)
    if refused:
        raise FrameError("forbidden", f"you may not watch user {refused[0]}")
    names, seen = await database_sync_to_async(_users_and_last_seen)(uids)
    uids = [uid for uid in uids if uid in names]
    # Indexed before the snapshot is read: nothing logged after it can be missed.
    reader.watches.start(consumer, uids)
    try:
        seq, statuses = await store.awatch_snapshot(uids)
        users = [
            {
                "id": s.uid,
                "username": names[s.uid],
                "online": s.online,
                "status": s.status,
                "last_seen": None if s.online or s.uid not in seen else seen[s.uid].isoformat(),
                "last_active": s.last_active,
            }
            for s in statuses
        ]
        await ctx.reply({"users": users})
    except BaseException:
        reader.watches.clear(consumer)
        raise
    reader.watches.ready(consumer, seq)
    return NO_REPLY
