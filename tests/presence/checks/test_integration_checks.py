"""System checks of the four integration points (docs/install.md): E040-E042, W040-W046."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery
from django.test import override_settings
from django.urls import include, path
from pytest_django.fixtures import Settings

import presence.celery
from presence.checks import (
    check_asgi_integration,
    check_celery_integration,
    check_settings_integration,
    check_urls_integration,
)


def ids(messages: list) -> list[str]:
    return [m.id for m in messages]


class TestThisProjectPasses:
    def test_config_passes_every_integration_check(self) -> None:
        assert check_settings_integration() == []
        assert check_urls_integration() == []
        assert check_asgi_integration() == []
        assert check_celery_integration() == []


class TestSettings:
    def test_missing_channels_and_sessions_app_is_e040(self, settings: Settings) -> None:
        apps = [a for a in settings.INSTALLED_APPS if a not in ("channels", "sessions_app")]
        with override_settings(INSTALLED_APPS=apps):
            messages = check_settings_integration()
        assert ids(messages) == ["presence.E040"]
        assert "channels, sessions_app" in messages[0].msg

    def test_no_default_channel_layer_is_e041(self, settings: Settings) -> None:
        settings.CHANNEL_LAYERS = {}
        assert ids(check_settings_integration()) == ["presence.E041"]

    def test_unset_redis_url_is_w040(self, settings: Settings) -> None:
        del settings.REDIS_URL
        messages = check_settings_integration()
        assert ids(messages) == ["presence.W040"]
        assert "redis://127.0.0.1:6379/0" in messages[0].msg


class WithoutPresence:
    """A root URLconf without presence.urls."""

    urlpatterns: list = []


class WithoutAdmin:
    """A root URLconf with presence.urls but without the admin."""

    urlpatterns = [path("", include("presence.urls"))]


class TestUrls:
    def test_without_presence_urls_is_e042(self) -> None:
        with override_settings(ROOT_URLCONF=WithoutPresence):
            assert "presence.E042" in ids(check_urls_integration())

    def test_without_admin_urls_is_w042(self) -> None:
        with override_settings(ROOT_URLCONF=WithoutAdmin):
            assert ids(check_urls_integration()) == ["presence.W042"]


class TestAsgi:
    def test_unset_is_w043(self, settings: Settings) -> None:
        del settings.ASGI_APPLICATION
        assert ids(check_asgi_integration()) == ["presence.W043"]

    def test_missing_module_is_w044(self, settings: Settings) -> None:
        settings.ASGI_APPLICATION = "no_such_project_xyz.asgi.application"
        assert ids(check_asgi_integration()) == ["presence.W044"]

    def test_a_module_without_presence_is_w045(
        self, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "plain_asgi_xyz.py").write_text(
            "from django.core.asgi import get_asgi_application\n"
            "application = get_asgi_application()\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        settings.ASGI_APPLICATION = "plain_asgi_xyz.application"
        messages = check_asgi_integration()
        assert ids(messages) == ["presence.W045"]
        assert "presence_application" in messages[0].hint


class TestCelery:
    def test_an_app_without_install_is_w046_and_install_clears_it(self) -> None:
        from config.celery import app as config_app

        host = Celery("host_without_presence")  # becomes the current app
        try:
            assert ids(check_celery_integration()) == ["presence.W046"]
            presence.celery.install(host)
            assert check_celery_integration() == []
        finally:
            config_app.set_current()
