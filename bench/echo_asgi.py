"""The floor: a bare Channels JSON echo consumer, served like the platform.

It is what a stock Channels application costs before any presence work: Django set up from
``config.settings``, Channels' ``ProtocolTypeRouter``/``URLRouter`` and an
``AsyncJsonWebsocketConsumer`` (including the stock dispatch, which runs
``close_old_connections`` through ``sync_to_async`` before every message). For parity with
the platform it keeps the channel layer of the settings (each connection gets a channel
name on the private Redis) but joins no group, and it has no authentication.

Wire format: ``{"type": "hello"}`` after accept, ``{"type": "heartbeat.ack", "id": N}``
for each ``{"type": "heartbeat", "id": N}``; anything else is ignored.
"""

from __future__ import annotations

import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class EchoConsumer(AsyncJsonWebsocketConsumer):
    """Accept, say hello, acknowledge heartbeats."""

    async def connect(self) -> None:
        await self.accept()
        await self.send_json({"type": "hello"})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "heartbeat":
            await self.send_json({"type": "heartbeat.ack", "id": content.get("id")})


application = ProtocolTypeRouter(
    {"websocket": URLRouter([path("ws/presence/", EchoConsumer.as_asgi())])}
)
