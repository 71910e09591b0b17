"""System checks of the presence settings: E001 (interval > 0) and E002 (TTL >= 2 x interval)."""

from __future__ import annotations

import pytest
from django.core.checks import Error, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from pytest_django.fixtures import Settings

from presence.checks import check_presence_timing


def presence_errors() -> list[str]:
    return [m.id for m in run_checks() if isinstance(m, Error) and m.id.startswith("presence.")]


class TestTiming:
    def test_default_settings_pass(self) -> None:
        assert check_presence_timing() == []
        assert presence_errors() == []

    @pytest.mark.parametrize(("interval", "ttl"), [(25, 49.9), (25, 25), (10, 5), (1, 1.5)])
    def test_ttl_under_two_intervals_is_e002(
        self, settings: Settings, interval: float, ttl: float
    ) -> None:
        settings.PRESENCE_HEARTBEAT_INTERVAL = interval
        settings.PRESENCE_TTL = ttl

        errors = check_presence_timing()

        assert [e.id for e in errors] == ["presence.E002"]
        assert "PRESENCE_TTL" in errors[0].msg
        assert errors[0].hint
        assert presence_errors() == ["presence.E002"]

    @pytest.mark.parametrize(("interval", "ttl"), [(25, 50), (25, 60), (0.5, 1)])
    def test_ttl_of_at_least_two_intervals_passes(
        self, settings: Settings, interval: float, ttl: float
    ) -> None:
        settings.PRESENCE_HEARTBEAT_INTERVAL = interval
        settings.PRESENCE_TTL = ttl

        assert check_presence_timing() == []

    def test_non_positive_interval_is_e001(self, settings: Settings) -> None:
        settings.PRESENCE_HEARTBEAT_INTERVAL = 0
        settings.PRESENCE_TTL = 60

        assert [e.id for e in check_presence_timing()] == ["presence.E001"]

    def test_manage_check_refuses_to_pass(self, settings: Settings) -> None:
        settings.PRESENCE_HEARTBEAT_INTERVAL = 30
        settings.PRESENCE_TTL = 45

        with pytest.raises(SystemCheckError, match=r"presence\.E002"):
            call_command("check")
