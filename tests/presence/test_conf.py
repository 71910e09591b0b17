"""presence/conf.py: the settings as read, kept until a setting changes."""

from __future__ import annotations

from django.conf import settings as django_settings

from presence.conf import AppSettings, app_settings


def test_a_default_is_read_until_the_setting_is_defined(settings) -> None:
    if hasattr(settings, "PRESENCE_SYNC_LIMIT"):
        del settings.PRESENCE_SYNC_LIMIT
    assert app_settings.SYNC_LIMIT == 10_000
    settings.PRESENCE_SYNC_LIMIT = 7
    assert app_settings.SYNC_LIMIT == 7
    del settings.PRESENCE_SYNC_LIMIT
    assert app_settings.SYNC_LIMIT == 10_000


def test_a_changed_setting_is_read_again(settings) -> None:
    settings.PRESENCE_TTL = 5
    assert app_settings.TTL == 5.0
    settings.PRESENCE_TTL = 9
    assert app_settings.TTL == 9.0


def test_a_read_is_kept_until_setting_changed_says_otherwise(settings) -> None:
    """A running server's settings do not change: a value read once is not looked up again,
    so a write that sends no ``setting_changed`` is not seen (the next signal is)."""
    settings.PRESENCE_TTL = 5
    assert app_settings.TTL == 5.0
    django_settings._wrapped.PRESENCE_TTL = 6  # in place: no new settings object, no signal
    assert app_settings.TTL == 5.0
    settings.PRESENCE_KEY_GRACE = 1  # any change empties what was read
    assert app_settings.TTL == 6.0


def test_a_source_other_than_django_settings_is_read_live() -> None:
    class Module:
        PRESENCE_TTL = 3

    source = Module()
    conf = AppSettings(source)
    assert conf.TTL == 3.0
    source.PRESENCE_TTL = 4  # type: ignore[attr-defined]
    assert conf.TTL == 4.0
