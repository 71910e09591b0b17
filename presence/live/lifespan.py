"""ASGI wrappers of the observability kit: process registry start-up, refused-origin logs.

``config/asgi.py`` wraps the whole application in :class:`ProcessRegistryMiddleware` and the
WebSocket stack in :class:`LoggingOriginValidator`. Both cost nothing per frame: the first
acts at start-up, shutdown and once per request, the second only on the handshake.
"""

from __future__ import annotations

import logging
from typing import Any

from presence.access.origin import PresenceOriginValidator
from presence.live import processes

logger = logging.getLogger("presence.ws")


class ProcessRegistryMiddleware:
    """Registers this process in Redis (presence/live/processes.py) for as long as it serves.

    With uvicorn's lifespan protocol on (``--lifespan on``, as the Procfile runs it) the
    process registers at start-up and withdraws its record at a graceful shutdown; Django and
    Channels do not speak lifespan, so its messages are answered here and not passed on.
    With ``--lifespan off`` the first HTTP request (a readiness probe, normally) or the first
    registered socket (presence.obs.metrics.connection_opened) registers it, and the record
    expires after a shutdown. A refused handshake writes nothing.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "http":
            processes.ensure_started()
        elif scope["type"] == "lifespan":
            return await self.lifespan(receive, send)
        return await self.app(scope, receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        """The ASGI lifespan protocol: start-up and shutdown of the process registry."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                processes.ensure_started()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await processes.local().withdraw()
                await send({"type": "lifespan.shutdown.complete"})
                return


class LoggingOriginValidator(PresenceOriginValidator):
    """The presence Origin check (presence/access/origin.py), logging each handshake it refuses."""

    def valid_origin(self, parsed_origin: Any) -> bool:
        ok = bool(super().valid_origin(parsed_origin))
        if not ok:
            origin = parsed_origin.geturl() if parsed_origin is not None else None
            reason = "origin not allowed" if origin else "no Origin header"
            logger.warning(
                "handshake refused: %s (Origin %r)",
                reason,
                origin,
                extra={"event": "refused", "reason": reason, "origin": origin},
            )
        return ok
