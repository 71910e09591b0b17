"""Fixed timing for the Lua script tests, so expected scores and key expiries are exact."""

from __future__ import annotations

import pytest
from pytest_django.fixtures import Settings

TTL_MS = 60_000
GRACE_MS = 600_000


@pytest.fixture(autouse=True)
def _timing(settings: Settings) -> None:
    settings.PRESENCE_TTL = TTL_MS / 1000
    settings.PRESENCE_KEY_GRACE = GRACE_MS / 1000
