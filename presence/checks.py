"""System checks: configuration invariants asserted at start-up."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, register

from presence.conf import app_settings


@register()
def check_presence_timing(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A TTL under two heartbeat intervals would expire clients after one late heartbeat."""
    errors = []
    interval, ttl = app_settings.HEARTBEAT_INTERVAL, app_settings.TTL
    if interval <= 0:
        errors.append(Error("PRESENCE_HEARTBEAT_INTERVAL must be positive.", id="presence.E001"))
    if ttl < 2 * interval:
        errors.append(
            Error(
                f"PRESENCE_TTL ({ttl:g} s) must be at least twice "
                f"PRESENCE_HEARTBEAT_INTERVAL ({interval:g} s).",
                hint="Raise PRESENCE_TTL or lower PRESENCE_HEARTBEAT_INTERVAL.",
                id="presence.E002",
            )
        )
    return errors


@register()
def check_webhook_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The environment's webhook endpoint must be signable and recognise its event types."""
    from presence.protocol.events import EVENT_TYPES

    errors = []
    if app_settings.WEBHOOK_URL and not app_settings.WEBHOOK_SECRET:
        errors.append(
            Error(
                "PRESENCE_WEBHOOK_URL is set without PRESENCE_WEBHOOK_SECRET.",
                hint="Set a secret: receivers verify X-Presence-Signature with it (docs/hooks.md).",
                id="presence.E010",
            )
        )
    unknown = sorted(set(app_settings.WEBHOOK_EVENTS) - set(EVENT_TYPES))
    if unknown:
        errors.append(
            Error(
                f"PRESENCE_WEBHOOK_EVENTS names unknown event types: {', '.join(unknown)}.",
                hint=f"Known types: {', '.join(EVENT_TYPES)}.",
                id="presence.E011",
            )
        )
    return errors
