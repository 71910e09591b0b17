"""Users for tests: ``user_factory`` and its async twin (plugin of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest


@pytest.fixture
def user_factory(django_user_model: Any) -> Callable[..., Any]:
    """Create users: ``user_factory("alice")``, ``user_factory(is_active=False)``."""
    counter = iter(range(1, 1_000_000))

    def make(username: str | None = None, **extra: Any) -> Any:
        name = username or f"user{next(counter)}"
        return django_user_model.objects.create_user(username=name, password="pw", **extra)

    return make


@pytest.fixture
def auser_factory(user_factory: Callable[..., Any], settings: Any) -> Callable[..., Awaitable[Any]]:
    """``await auser_factory("alice")``: ``user_factory`` for async tests.

    Passwords are hashed with MD5 first (PBKDF2 costs ~0.2 s per user); the default hashers
    stay listed, so nothing else changes.
    """
    from asgiref.sync import sync_to_async

    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]

    async def make(username: str | None = None, **extra: Any) -> Any:
        return await sync_to_async(user_factory)(username, **extra)

    return make
