"""What a connection says about its user beyond being connected: activity (``last_active``)."""

from __future__ import annotations

from typing import Any

from presence.actions import connections as actions
from presence.handlers.context import HandlerContext
from presence.handlers.registry import NO_REPLY, registry


@registry.handler("activity", core=True, version="1")
async def activity(ctx: HandlerContext, data: dict[str, Any]) -> Any:
    """The user is at the keyboard: move ``last_active`` (throttled, batched with heartbeats).

    Answered only when the frame has an ``id`` (``{"recorded": false}`` when throttled):
    clients send it on input, and an unasked-for reply per keystroke burst is waste.
    """
    recorded = actions.do_record_activity(ctx.user_id)
    return NO_REPLY if ctx.frame_id is None else {"recorded": recorded}
