"""System checks: configuration invariants asserted at start-up."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning

from presence.conf import app_settings
from presence.redis_url import redacted


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


# --------------------------------------------------------------------------- integration points
# What a host project must add (docs/install.md): one check per integration point, so that
# `manage.py check` names the missing step instead of a first request failing far from it.
REQUIRED_APPS = (
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
    "sessions_app",
)


@register()
def check_settings_integration(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Settings: the apps presence needs, a default channel layer, REDIS_URL."""
    from django.apps import apps
    from django.conf import settings

    messages: list[CheckMessage] = []
    missing = [name for name in REQUIRED_APPS if not apps.is_installed(name)]
    if missing:
        messages.append(
            Error(
                f"INSTALLED_APPS lacks {', '.join(missing)}.",
                hint='Add INSTALLED_APPS += ["channels", "presence", "sessions_app"] '
                "(docs/install.md, step 2); auth, contenttypes and sessions are Django's.",
                id="presence.E040",
            )
        )
    if "default" not in getattr(settings, "CHANNEL_LAYERS", {}):
        messages.append(
            Error(
                "CHANNEL_LAYERS has no 'default' layer: kicks and disconnects cannot reach "
                "the sockets.",
                hint="Set CHANNEL_LAYERS as docs/install.md shows (step 2).",
                id="presence.E041",
            )
        )
    if not getattr(settings, "REDIS_URL", ""):
        messages.append(
            CheckWarning(
                f"REDIS_URL is not set: presence uses {redacted(app_settings.REDIS_URL)}.",
                hint="Set REDIS_URL to the Redis server holding presence (docs/install.md).",
                id="presence.W040",
            )
        )
    return messages


@register(Tags.urls)
def check_urls_integration(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """URLs: presence.urls included; the console with the admin's URLs."""
    from django.apps import apps
    from django.urls import NoReverseMatch, reverse

    messages: list[CheckMessage] = []
    try:
        reverse("presence:online")
        reverse("healthz")
    except NoReverseMatch:
        messages.append(
            Error(
                "The presence URLs are not in the root URLconf: no HTTP API, token endpoint, "
                "/healthz, /readyz or /metrics.",
                hint='Add path("", include("presence.urls")) to urlpatterns (docs/install.md).',
                id="presence.E042",
            )
        )
    if apps.is_installed("django.contrib.admin"):
        try:
            reverse("admin:presence_online")
        except NoReverseMatch:
            messages.append(
                CheckWarning(
                    "The operator console is not reachable: admin.site.urls is not in the "
                    "root URLconf.",
                    hint='Add path("admin/", admin.site.urls) (docs/install.md).',
                    id="presence.W042",
                )
            )
    return messages


@register()
def check_asgi_integration(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """ASGI: the module of ASGI_APPLICATION serves presence.

    The module is read, not imported: importing an ASGI module starts a web process's work
    (presence_process records handlers in the database).
    """
    import importlib.util

    from django.conf import settings

    target = str(getattr(settings, "ASGI_APPLICATION", "") or "")
    hint = (
        "In asgi.py, after django_asgi_app = get_asgi_application(): "
        "application = presence_application(django_asgi_app) (docs/install.md, step 4)."
    )
    if not target:
        return [
            CheckWarning(
                "ASGI_APPLICATION is not set: the WebSocket route is served only if the "
                "server's ASGI module builds it.",
                hint=f"Set ASGI_APPLICATION = '<project>.asgi.application'. {hint}",
                id="presence.W043",
            )
        ]
    module = target.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return [
            CheckWarning(f"ASGI_APPLICATION's module {module} was not found.", id="presence.W044")
        ]
    with open(spec.origin, encoding="utf-8") as source:
        text = source.read()
    # Either integration the guide documents: the whole application, or the parts of it.
    if "presence_application" in text or "websocket_urlpatterns" in text:
        return []
    return [
        CheckWarning(
            f"{module} does not serve /ws/presence/ (neither presence_application nor "
            "presence.routing.websocket_urlpatterns is used there).",
            hint=hint,
            id="presence.W045",
        )
    ]


@register()
def check_celery_integration(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Celery: the host's app has presence's tasks and beat schedule (presence.celery.install).

    The host's Celery app is the current one once its module is imported (Celery's Django
    layout imports it from the project package's __init__.py).
    """
    from celery import current_app

    from presence.celery import is_installed

    # The app itself, not the proxy (install() recorded apps, not proxies).
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if is_installed(app):
        return []
    return [
        CheckWarning(
            "The current Celery app has no presence schedule: without Celery beat and a "
            "worker, lapsed connections are never swept and counters never flushed.",
            hint="In the project's celery.py, after app.config_from_object(...): "
            "presence.celery.install(app) (docs/install.md, step 5).",
            id="presence.W046",
        )
    ]


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
                    f"PRESENCE_REDIS_SHARD_URLS: {redacted(url)!r} is malformed: {exc}.",
                    id="presence.E033",
                )
            )
    if app_settings.SHARDS < 1:
        errors.append(Error("PRESENCE_SHARDS must be at least 1.", id="presence.E034"))
    return errors
