"""Users for tests: ``user_factory`` and its async twin (plugin of tests/conftest.py)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


@functools.cache
def password_hash(password: str, hasher: str) -> str:
    """``make_password(password)`` with the first of the configured hashers, computed once
    per process and ``hasher``: PBKDF2 costs 0.2 s per call on a quiet machine and over a
    second on a busy one, and a test creating twenty users paid it twenty times. The hash is
    a real one (servers started by a test verify it with their own default hashers); only its
    salt is shared between the users of a process."""
    from django.contrib.auth.hashers import make_password

    return make_password(password)


@pytest.fixture
def user_factory(django_user_model: Any) -> Callable[..., Any]:
    """Create users: ``user_factory("alice")``, ``user_factory(is_active=False)``.

    Their password is "pw" (hashed once per process, ``password_hash``).
    """
    from django.conf import settings

    counter = iter(range(1, 1_000_000))

    def make(username: str | None = None, **extra: Any) -> Any:
        name = username or f"user{next(counter)}"
        user = django_user_model.objects.create_user(username=name, password=None, **extra)
        user.password = password_hash("pw", settings.PASSWORD_HASHERS[0])
        user.save(update_fields=["password"])
        return user

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
