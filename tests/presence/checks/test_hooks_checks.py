"""System checks of the webhook settings: E010 (a URL without a secret), E011 (unknown types)."""

from __future__ import annotations

from pytest_django.fixtures import Settings

from presence.checks import check_webhook_settings


def test_no_endpoint_configured_passes() -> None:
    assert check_webhook_settings() == []


def test_url_and_secret_pass(settings: Settings) -> None:
    settings.PRESENCE_WEBHOOK_URL = "https://example.com/hooks"
    settings.PRESENCE_WEBHOOK_SECRET = "s"
    settings.PRESENCE_WEBHOOK_EVENTS = ["user.offline", "room.vacated"]

    assert check_webhook_settings() == []


def test_url_without_secret_is_e010(settings: Settings) -> None:
    settings.PRESENCE_WEBHOOK_URL = "https://example.com/hooks"

    assert [e.id for e in check_webhook_settings()] == ["presence.E010"]


def test_unknown_event_type_is_e011(settings: Settings) -> None:
    settings.PRESENCE_WEBHOOK_EVENTS = ["user.offline", "user.gone"]

    [error] = check_webhook_settings()
    assert error.id == "presence.E011" and "user.gone" in error.msg
