"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Initialise Django (apps, models) before importing code that uses the ORM.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from presence.access.auth import PresenceAuthStack  # noqa: E402
from presence.access.origin import LoggingOriginValidator  # noqa: E402
from presence.handlers.lifecycle import register_at_startup  # noqa: E402
from presence.live import gctune  # noqa: E402
from presence.live.lifespan import ProcessRegistryMiddleware  # noqa: E402
from presence.routing import websocket_urlpatterns  # noqa: E402

# Every web process records its message handlers (RegisteredHandler) before serving.
register_at_startup()
# Start-up objects frozen out of the cyclic GC, thresholds raised (presence/live/gctune.py).
gctune.configure(report_at_exit=os.environ.get("PRESENCE_GC_REPORT", "") == "1")

# The process registers itself in Redis (presence/live/processes.py) on its first request.
application = ProcessRegistryMiddleware(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            # Origin must match ALLOWED_HOSTS, or exactly PRESENCE_ALLOWED_ORIGINS when set:
            # blocks cross-site WebSocket hijacking. Refusals are logged with the Origin.
            "websocket": LoggingOriginValidator(
                PresenceAuthStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)
