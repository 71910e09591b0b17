"""Server-to-server callers of the HTTP API: bearer tokens from ``PRESENCE_API_TOKENS``."""

from __future__ import annotations

import hmac

from presence.conf import app_settings


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None for any other form."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def is_api_token(token: str) -> bool:
    """Whether ``token`` is one of the configured API tokens.

    Compared in constant time, and against every configured token (no early exit), so the
    answer's timing tells nothing about which token or how much of one matched.
    """
    presented = token.encode()
    found = False
    for expected in app_settings.API_TOKENS:
        found |= hmac.compare_digest(expected.encode(), presented)
    return found
