"""WebSocket authentication: Django session cookie, or a short-lived signed token.

Tokens are minted by ``POST /api/presence/token/`` for the logged-in user, carry a salt that
makes them good for nothing but this endpoint, expire after ``PRESENCE_TOKEN_MAX_AGE`` seconds,
and die with a password change (they embed the session auth hash).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core import signing
from django.utils.crypto import constant_time_compare

from .app_settings import app_settings

TOKEN_SALT = "presence.ws-token"  # noqa: S105 - a signing salt, not a secret


def mint_token(user: AbstractBaseUser) -> str:
    """A signed token identifying ``user`` to ``/ws/presence/``."""
    return signing.dumps({"u": user.pk, "h": user.get_session_auth_hash()}, salt=TOKEN_SALT)


def user_from_token(token: str) -> AbstractBaseUser | None:
    """The user a valid, unexpired token names, else None (inactive users are returned)."""
    try:
        payload = signing.loads(token, salt=TOKEN_SALT, max_age=app_settings.TOKEN_MAX_AGE)
    except signing.BadSignature:  # includes SignatureExpired
        return None
    if not isinstance(payload, dict):
        return None
    uid = payload.get("u")
    if not isinstance(uid, (int, str)):
        return None
    user = get_user_model()._default_manager.filter(pk=uid).first()
    if user is None or not constant_time_compare(
        str(payload.get("h", "")), user.get_session_auth_hash()
    ):
        return None
    return user


class TokenAuthMiddleware:
    """Sets ``scope["user"]`` from ``?token=`` when the session cookie gave no user."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        # This frame lives as long as the socket: keep nothing in it but what is passed on.
        token = _query_token(scope)
        if token and not scope["user"].is_authenticated:
            # On the thread-sensitive thread like every ORM call here: Channels closes
            # connections around calls there; on other executor threads (asgiref 3.13) the
            # connection a call opens is not the one it closes, and they pile up.
            found = await database_sync_to_async(user_from_token)(token)
            scope = {**scope, "user": found or AnonymousUser()}
            del found
        return await self.inner(scope, receive, send)


class SessionAuthMiddleware(AuthMiddleware):
    """Channels' ``AuthMiddleware``, minus its database hop for handshakes without a cookie.

    Without a session cookie the session can name no user, yet Channels still resolves it
    in the thread-sensitive executor: one queued thread hop per connect (token clients, a
    connect storm). Here such a handshake is anonymous at once; with the cookie, Channels'
    own resolution runs unchanged.
    """

    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        if settings.SESSION_COOKIE_NAME not in scope.get("cookies", {}):
            scope["user"]._wrapped = AnonymousUser()
            return
        await super().resolve_scope(scope)


def _query_token(scope: dict[str, Any]) -> str:
    """``?token=`` of the handshake URL ("" when absent)."""
    raw = scope.get("query_string", b"")
    if b"token=" not in raw:
        return ""
    return (parse_qs(raw.decode("latin-1")).get("token") or [""])[0]


def PresenceAuthStack(inner: Any) -> Any:  # noqa: N802 - mirrors AuthMiddlewareStack
    """Session-cookie auth, then token auth, around ``inner`` (Channels' stack otherwise)."""
    return CookieMiddleware(SessionMiddleware(SessionAuthMiddleware(TokenAuthMiddleware(inner))))
