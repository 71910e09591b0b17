"""Example handler family: a typing indicator broadcast to a room (used by the demo page)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from presence.handlers.context import HandlerContext
from presence.handlers.core import ROOM_PATTERN
from presence.handlers.registry import FrameError, registry


class TypingPayload(BaseModel):
    room: str = Field(pattern=ROOM_PATTERN)
    typing: bool = True


@registry.handler("chat.typing", timeout=2.0, payload=TypingPayload, version="1")
async def chat_typing(ctx: HandlerContext, data: TypingPayload) -> dict[str, Any]:
    """Tell a room's members that this user started or stopped typing."""
    if data.room not in ctx.rooms:
        raise FrameError("invalid_payload", f"room: join {data.room!r} before typing in it")
    await ctx.broadcast(
        data.room,
        {
            "type": "chat.typing",
            "room": data.room,
            "user": {"id": ctx.user_id, "username": ctx.username},
            "typing": data.typing,
        },
    )
    return {"room": data.room}
