"""This repository's config/ uses exactly the four integration points of docs/install.md."""

from __future__ import annotations

import ast
from pathlib import Path

from django.conf import settings
from django.urls import get_resolver

import presence.celery
from presence.asgi import is_presence_application

CONFIG = Path(__file__).resolve().parent.parent / "config"


def test_settings_install_the_three_apps_and_the_default_admin() -> None:
    for app in ("channels", "presence", "sessions_app", "django.contrib.admin"):
        assert app in settings.INSTALLED_APPS
    # No admin site or AdminConfig of ours: the console rides on the default admin.site.
    assert not [a for a in settings.INSTALLED_APPS if a.startswith("presence.")]
    assert "default" in settings.CHANNEL_LAYERS
    assert settings.REDIS_URL


def test_urls_include_presence_urls_and_the_admin() -> None:
    included = {
        getattr(entry.urlconf_module, "__name__", None)
        for entry in get_resolver().url_patterns
        if hasattr(entry, "urlconf_module")
    }
    assert "presence.urls" in included
    # The API and the ops endpoints come only through presence.urls, not included one by one.
    assert "presence.api.urls" not in included
    assert "presence.ops.urls" not in included


def test_asgi_application_is_presence_applications() -> None:
    import config.asgi

    assert is_presence_application(config.asgi.application)
    assert settings.ASGI_APPLICATION == "config.asgi.application"


def test_celery_calls_install() -> None:
    from config.celery import app

    assert presence.celery.is_installed(app)
    # The schedule comes from there, not from the settings.
    assert not hasattr(settings, "CELERY_BEAT_SCHEDULE")
    assert app.conf.beat_schedule


def test_config_builds_nothing_of_its_own() -> None:
    """The pieces presence_application and install() hold are not imported in config/."""
    imported: set[str] = set()
    for name in ("asgi.py", "celery.py", "urls.py"):
        tree = ast.parse((CONFIG / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert (
        not {
            "channels.routing.ProtocolTypeRouter",
            "presence.routing.websocket_urlpatterns",
            "presence.access.auth.PresenceAuthStack",
            "presence.jobs.catalog.beat_schedule",
        }
        & imported
    )
