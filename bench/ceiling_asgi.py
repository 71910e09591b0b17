"""The ceiling: a raw ASGI WebSocket echo, no Django, no Channels.

The least any Python application behind the same uvicorn can cost: it decodes each frame and
answers heartbeats with the same frames as the floor (``{"type": "hello"}`` after accept,
``{"type": "heartbeat.ack", "id": N}`` per heartbeat).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

HELLO = json.dumps({"type": "hello"})


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """An ASGI app that serves WebSockets only (other scopes are dropped)."""
    if scope["type"] != "websocket":
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": HELLO})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if not text:
            continue
        try:
            frame = json.loads(text)
        except ValueError:
            continue
        if isinstance(frame, dict) and frame.get("type") == "heartbeat":
            ack = json.dumps({"type": "heartbeat.ack", "id": frame.get("id")})
            await send({"type": "websocket.send", "text": ack})
