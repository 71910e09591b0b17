"""ASGI entry point: HTTP through Django, WebSockets through Channels (presence.asgi)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Initialise Django (apps, models) before importing code that uses the ORM.
django_asgi_app = get_asgi_application()

from presence.asgi import presence_application  # noqa: E402

# /ws/presence/ behind the Origin check and authentication; the process registers itself in
# Redis and records its message handlers (presence/asgi.py, docs/install.md).
application = presence_application(django_asgi_app)
