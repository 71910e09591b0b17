"""The web process's life in the process registry: ASGI lifespan start-up and shutdown.

``config/asgi.py`` wraps the whole application in :class:`ProcessRegistryMiddleware`. It
costs nothing per frame: it acts at start-up, at shutdown and once per HTTP request.
"""

from __future__ import annotations

import logging
from typing import Any

from presence.conf import app_settings
from presence.live import processes
from presence.live.endings import get_end_queue

logger = logging.getLogger(__name__)


class ProcessRegistryMiddleware:
    """Registers this process in Redis (presence/live/processes.py) for as long as it serves.

    With uvicorn's lifespan protocol on (``--lifespan on``, as the Procfile runs it) the
    process registers at start-up and withdraws its record at a graceful shutdown; Django and
    Channels do not speak lifespan, so its messages are answered here and not passed on.
    With ``--lifespan off`` the first HTTP request (a readiness probe, normally) or the first
    registered socket (presence.live.processes.track_open) registers it, and the record
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
                # uvicorn closed the sockets (1012) before this: their ends that Redis has
                # not taken yet are written now, within the budget, before the record goes.
                await drain_endings()
                await processes.local().withdraw()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def drain_endings() -> None:
    """Write the connection ends still queued, up to ``PRESENCE_END_DRAIN_TIMEOUT``."""
    queue = get_end_queue()
    if not await queue.drain(app_settings.END_DRAIN_TIMEOUT):
        # The sweep ends these after their TTL; the rest of the shutdown goes on.
        logger.warning("shutdown: %d connection end(s) left unwritten", len(queue))
