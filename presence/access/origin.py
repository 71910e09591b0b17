"""Which web pages may open presence sockets: the Origin check of the WebSocket handshake.

By default the Origin's host must be one of ``ALLOWED_HOSTS`` (Channels'
``AllowedHostsOriginValidator``): its scheme and port are not compared, so
``https://example.com:8443`` passes wherever ``example.com`` is an allowed host. Set
``PRESENCE_ALLOWED_ORIGINS`` (``scheme://host[:port]``, comma-separated in the environment)
to compare the whole origin exactly; default ports (80 for http, 443 for https) may be left
out on either side. A refused handshake is answered with HTTP 403.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings

from presence.conf import app_settings

logger = logging.getLogger("presence.ws")

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host:port`` in lower case, with the scheme's default port filled in."""
    scheme = scheme.lower()
    return f"{scheme}://{host.lower()}:{port or DEFAULT_PORTS.get(scheme, 0)}"


def _parse(origin: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(origin.strip())
    return normalize_origin(parsed.scheme, parsed.hostname or "", parsed.port)


class PresenceOriginValidator(OriginValidator):
    """Exact origins when PRESENCE_ALLOWED_ORIGINS is set, else the allowed hosts (read live)."""

    def __init__(self, application: Any) -> None:
        super().__init__(application, [])

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        strict = app_settings.ALLOWED_ORIGINS
        if strict:
            if parsed_origin is None or not parsed_origin.hostname:
                return False
            try:
                port = parsed_origin.port
            except ValueError:  # a port that is not a number
                return False
            found = normalize_origin(parsed_origin.scheme, parsed_origin.hostname, port)
            return found in {_parse(allowed) for allowed in strict}
        hosts = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not hosts:
            hosts = ["localhost", "127.0.0.1", "[::1]"]
        self.allowed_origins = hosts
        return bool(super().valid_origin(parsed_origin))


class LoggingOriginValidator(PresenceOriginValidator):
    """The presence Origin check (above), logging each handshake it refuses."""

    def valid_origin(self, parsed_origin: Any) -> bool:
        ok = bool(super().valid_origin(parsed_origin))
        if not ok:
            origin = parsed_origin.geturl() if parsed_origin is not None else None
            reason = "origin not allowed" if origin else "no Origin header"
            logger.warning(
                "handshake refused: %s (Origin %r)",
                reason,
                origin,
                extra={"event": "refused", "reason": reason, "origin": origin},
            )
        return ok
