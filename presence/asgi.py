"""ASGI wrappers of the observability kit: process registry start-up, refused-origin logs.

``config/asgi.py`` wraps the whole application in :class:`ProcessRegistryMiddleware` and the
WebSocket stack in :class:`LoggingOriginValidator`. Both cost nothing per frame:
the first acts once per connection or request, the second only on the handshake.
"""

from __future__ import annotations

import logging
from typing import Any

from . import processes
from .origin import PresenceOriginValidator

logger = logging.getLogger("presence.ws")


class ProcessRegistryMiddleware:
    """Starts this process's registry task in the server's event loop on its first call.

    uvicorn runs here with ``--lifespan off``, so there is no start-up hook: the first HTTP
    request (a readiness probe, normally) registers the process, or its first registered
    socket (presence.metrics.connection_opened); a refused handshake writes nothing.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "http":
            processes.ensure_started()
        return await self.app(scope, receive, send)


class LoggingOriginValidator(PresenceOriginValidator):
    """The presence Origin check (presence/origin.py), logging each handshake it refuses."""

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
