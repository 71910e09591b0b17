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


@register()
def check_redis_urls(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """REDIS_URL and a Redis CELERY_BROKER_URL must parse (presence/redis_url.py says why not).

    Settings keep a malformed URL as given (so that this check can run at all); without it
    the first client would fail at run time, far from the setting's name.
    """
    from django.conf import settings

    from presence.redis_url import SCHEMES, RedisUrlError, is_redis_url, parse_redis_url

    forms = ", ".join(f"{s}://" for s in SCHEMES)
    errors = []
    urls = [("REDIS_URL", app_settings.REDIS_URL, "presence.E030")]
    broker = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    if is_redis_url(broker):  # amqp:// and kombu's own spellings are Celery's to check
        urls.append(("CELERY_BROKER_URL", broker, "presence.E031"))
    for name, url, error_id in urls:
        try:
            parse_redis_url(url)
        except RedisUrlError as exc:
            errors.append(
                Error(
                    f"{name} is malformed: {exc}.",
                    hint=f"Use one of {forms}; the Sentinel form is "
                    "redis+sentinel://[[user]:password@]host1:26379,host2:26379/<master>/<db> "
                    "(docs/operations.md, High availability).",
                    id=error_id,
                )
            )
    return errors


@register()
def check_presence_store_shape(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The presence store has one shape: one Redis, a Cluster, or independent shard URLs.

    Both a Cluster URL and shard URLs would leave two answers to "where is shard n?".
    """
    from presence.redis_url import RedisUrlError, parse_redis_url

    errors = []
    if app_settings.REDIS_CLUSTER_URL and app_settings.REDIS_SHARD_URLS:
        errors.append(
            Error(
                "PRESENCE_REDIS_CLUSTER_URL and PRESENCE_REDIS_SHARD_URLS are both set.",
                hint="Choose one shape of the presence store (docs/operations.md, Sharding).",
                id="presence.E032",
            )
        )
    for url in app_settings.REDIS_SHARD_URLS:
        try:
            parse_redis_url(url)
        except RedisUrlError as exc:
            errors.append(
                Error(
                    f"PRESENCE_REDIS_SHARD_URLS: {url!r} is malformed: {exc}.", id="presence.E033"
                )
            )
    if app_settings.SHARDS < 1:
        errors.append(Error("PRESENCE_SHARDS must be at least 1.", id="presence.E034"))
    return errors
