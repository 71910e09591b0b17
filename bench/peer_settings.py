"""Django settings of the peer: django-channels-presence 1.0.0 in its own small project.

Loaded only by the peer's own virtualenv (Django 3.2, which the library needs: it builds its
signal with ``providing_args``, removed in Django 4.0). Same private Redis as the platform,
its own throw-away SQLite file, DEBUG off.
"""

from __future__ import annotations

import os

from django.apps import AppConfig


class ChannelsPresenceConfig(AppConfig):
    """The library's app, named explicitly.

    1.0.0 ships an ``apps.py`` whose only AppConfig says ``name = "rooms"``; Django 3.2 picks
    that class up automatically and fails ("Cannot import 'rooms'"), so the app is listed
    through this config instead, the usual workaround.
    """

    name = "channels_presence"
    default_auto_field = "django.db.models.AutoField"


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "bench-peer-only")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "bench.peer_settings.ChannelsPresenceConfig",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("PEER_DATABASE", "peer.sqlite3"),
        "OPTIONS": {"timeout": 20},
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")]},
    }
}
ASGI_APPLICATION = "bench.peer_asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
# The library's prune age; the bench runs no pruning task (neither does it for the platform).
CHANNELS_PRESENCE_MAX_AGE = 60
