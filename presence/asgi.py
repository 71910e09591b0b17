"""The app's ASGI entry point for a host's asgi.py (docs/install.md).

After ``django_asgi_app = get_asgi_application()`` (Django set up first, as Channels' docs
order it)::

    from presence.asgi import presence_application
    application = presence_application(django_asgi_app)

A host with a ``ProtocolTypeRouter`` of its own builds the same from the parts instead::

    from presence.asgi import presence_process, websocket_stack
    from presence.routing import websocket_urlpatterns
    application = presence_process(ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": websocket_stack(URLRouter(websocket_urlpatterns + my_routes)),
    }))

Everything is imported inside the functions: this module may be imported before Django is
set up, but the functions run after it.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

ASGIApp = Any  # channels and asgiref type their applications loosely too

# The applications presence_application built (config's test and a host's own can ask).
_built: weakref.WeakSet[Any] = weakref.WeakSet()


def websocket_stack(inner: ASGIApp) -> ASGIApp:
    """``inner`` (a ``URLRouter``) behind the Origin check and the authentication.

    The Origin must match ``ALLOWED_HOSTS``, or exactly ``PRESENCE_ALLOWED_ORIGINS`` when set:
    this blocks cross-site WebSocket hijacking, and refusals are logged with the Origin. The
    user comes from the session cookie or a signed ``?token=`` (presence/access/auth.py).
    """
    from presence.access.auth import PresenceAuthStack
    from presence.access.origin import LoggingOriginValidator

    return LoggingOriginValidator(PresenceAuthStack(inner))


def presence_process(application: ASGIApp) -> ASGIApp:
    """Prepare this web process and wrap ``application`` (the host's protocol router).

    Records the message handlers (``RegisteredHandler`` rows) before anything is served,
    tunes the cyclic GC (presence/live/gctune.py; ``PRESENCE_GC_REPORT=1`` reports at exit),
    and registers the process in Redis for as long as it serves (the ASGI lifespan, or the
    first request without it).
    """
    from presence.handlers.lifecycle import register_at_startup
    from presence.live import gctune
    from presence.live.lifespan import ProcessRegistryMiddleware

    register_at_startup()
    gctune.configure(report_at_exit=os.environ.get("PRESENCE_GC_REPORT", "") == "1")
    return ProcessRegistryMiddleware(application)


def presence_application(django_asgi_app: ASGIApp) -> ASGIApp:
    """The host's ASGI application: HTTP to ``django_asgi_app``, ``/ws/presence/`` to the
    presence consumer behind :func:`websocket_stack`, in a :func:`presence_process`."""
    from channels.routing import ProtocolTypeRouter, URLRouter

    from presence.routing import websocket_urlpatterns

    application = presence_process(
        ProtocolTypeRouter(
            {
                "http": django_asgi_app,
                "websocket": websocket_stack(URLRouter(websocket_urlpatterns)),
            }
        )
    )
    _built.add(application)
    return application


def is_presence_application(application: object) -> bool:
    """Whether ``application`` was built by :func:`presence_application`."""
    try:
        return application in _built
    except TypeError:  # unhashable: not ours
        return False
