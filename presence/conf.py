"""Every presence setting with its default, read again whenever the settings change (so
``override_settings`` works).

This is the one place that holds the defaults: config/settings.py defines a presence setting
only when its environment variable is set, and everything else falls back to the value here.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

# A comma that starts another URL of PRESENCE_REDIS_SHARD_URLS (presence/redis_url.py's schemes).
_URL_START = re.compile(r",(?=\s*(?:redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://)")

# Only this site's own resources; the nonce is for the demo page's inline import map.
DEFAULT_CSP = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


# Raw values of ``django.conf.settings`` as read, by name (_UNSET: not defined there). A read
# of a setting the project leaves out goes through LazySettings' AttributeError path, about
# 2 µs; a connect reads dozens. They are kept for one settings object: override_settings and
# pytest-django's ``settings`` (a write or a ``del``) put a new one in place, and the former
# comes back when they end; ``setting_changed`` empties them too. Only a write straight onto
# the settings object in place goes unseen, and nothing but a test would do that.
_UNSET = object()
_read: dict[str, Any] = {}
_read_from: list[object] = [None]  # the settings object _read holds values of


def _forget_settings(**_: Any) -> None:
    _read.clear()


setting_changed.connect(_forget_settings)


def _setting(name: str, default: Any) -> Any:
    # object.__getattribute__: LazyObject's own runs in Python and would cost most of the gain.
    holder = object.__getattribute__(settings, "_wrapped")
    if holder is not _read_from[0]:
        _read.clear()
        _read_from[0] = holder
    try:
        value = _read[name]
    except KeyError:
        value = _read[name] = getattr(settings, name, _UNSET)
    return default if value is _UNSET else value


class AppSettings:
    """Typed, live view of the presence settings.

    ``source``: where the settings are read, ``django.conf.settings`` unless given (the
    settings module itself, while it is being loaded, reads its own values through one).
    """

    def __init__(self, source: object = None) -> None:
        self._source = source

    def _get(self, name: str, default: Any) -> Any:
        if self._source is None:
            return _setting(name, default)
        return getattr(self._source, name, default)

    @property
    def HEARTBEAT_INTERVAL(self) -> float:
        """Seconds between client heartbeats, announced in ``hello``."""
        return float(self._get("PRESENCE_HEARTBEAT_INTERVAL", 25.0))

    @property
    def TTL(self) -> float:
        """Seconds a connection stays online after its last heartbeat."""
        return float(self._get("PRESENCE_TTL", 60.0))

    @property
    def KEY_GRACE(self) -> float:
        """Seconds Redis keeps a lapsed connection's keys so the sweep can still read them."""
        return float(self._get("PRESENCE_KEY_GRACE", 600.0))

    @property
    def KEY_PREFIX(self) -> str:
        """Prefix of every presence hash tag: ``{P}`` for control keys, ``{P:<n>:<salt>}`` for
        logical shard n (presence/store/keys.py)."""
        return str(self._get("PRESENCE_KEY_PREFIX", "presence"))

    @property
    def REDIS_URL(self) -> str:
        """Redis server of the control keys, the channel layer and Celery; also the presence
        store unless PRESENCE_REDIS_CLUSTER_URL or PRESENCE_REDIS_SHARD_URLS is set."""
        return str(self._get("REDIS_URL", "redis://127.0.0.1:6379/0"))

    @property
    def SHARDS(self) -> int:
        """Logical shards of the presence store (users and rooms hash onto them). 64 spreads
        evenly over up to ~16 nodes and lets jobs run in parallel while a reader can follow
        every shard cheaply; changing it is a migration (docs/operations.md)."""
        return int(self._get("PRESENCE_SHARDS", 64))

    @property
    def REDIS_CLUSTER_URL(self) -> str | None:
        """Any node of a Redis Cluster holding the presence store (None: no Cluster)."""
        value = self._get("PRESENCE_REDIS_CLUSTER_URL", None)
        return str(value) if value else None

    @property
    def REDIS_SHARD_URLS(self) -> list[str]:
        """Independent Redis primaries holding the presence store; logical shard n lives on
        ``jump_hash(n, len(urls))``. Each may be a ``redis+sentinel://`` URL. Empty: none."""
        value = self._get("PRESENCE_REDIS_SHARD_URLS", [])
        # A Sentinel URL lists its sentinels with commas, and the environment's list splits
        # on every comma (config/settings.py: env.list): join the pieces back and split only
        # where a scheme starts a new URL.
        text = value if isinstance(value, str) else ",".join(str(url) for url in value)
        urls = (url.strip(" ,") for url in _URL_START.split(text))
        return [url for url in urls if url]

    @property
    def WS_MAX_MESSAGE_BYTES(self) -> int:
        """Largest accepted client frame; larger frames close the socket with 1009."""
        return int(self._get("WS_MAX_MESSAGE_BYTES", 65536))

    @property
    def MAX_CONNECTIONS_PER_USER(self) -> int:
        """Live connections one user may hold across all processes (0 = no limit)."""
        return int(self._get("PRESENCE_MAX_CONNECTIONS_PER_USER", 32))

    @property
    def MAX_CONNECTIONS_PER_ADDRESS(self) -> int:
        """Connections one client address may hold across all processes (0 = no limit)."""
        return int(self._get("PRESENCE_MAX_CONNECTIONS_PER_ADDRESS", 5000))

    @property
    def ADDRESS_CONNECT_RATE(self) -> float:
        """Sustained connects per second one client address may make (0 = no limit)."""
        return float(self._get("PRESENCE_ADDRESS_CONNECT_RATE", 50.0))

    @property
    def ADDRESS_CONNECT_BURST(self) -> int:
        """Connects one address may make at once before the rate applies (bucket size)."""
        return int(self._get("PRESENCE_ADDRESS_CONNECT_BURST", 2000))

    @property
    def CONNECT_TIMEOUT(self) -> float:
        """Seconds a new connection may wait on the store before it is closed with 1013."""
        return float(self._get("PRESENCE_CONNECT_TIMEOUT", 5.0))

    @property
    def REDIS_SOCKET_TIMEOUT(self) -> float:
        """Seconds any presence Redis command may wait for its answer (then it fails)."""
        return float(self._get("PRESENCE_REDIS_SOCKET_TIMEOUT", 3.0))

    @property
    def REDIS_CONNECT_TIMEOUT(self) -> float:
        """Seconds opening a connection to Redis may take."""
        return float(self._get("PRESENCE_REDIS_CONNECT_TIMEOUT", 2.0))

    @property
    def KICK_REVOKE_SECONDS(self) -> int:
        """How long a kicked connection's login session may not open sockets again."""
        return int(self._get("PRESENCE_KICK_REVOKE_SECONDS", 24 * 3600))

    @property
    def ROOM_AUTHORIZER(self) -> str:
        """Dotted path of ``(user, room, action) -> bool`` deciding room access ("" = allow)."""
        return str(self._get("PRESENCE_ROOM_AUTHORIZER", ""))

    @property
    def WATCH_AUTHORIZER(self) -> str:
        """Dotted path of ``(user, watched_user_id, "watch") -> bool`` ("" = anyone may watch)."""
        return str(self._get("PRESENCE_WATCH_AUTHORIZER", ""))

    @property
    def MAX_WATCHED(self) -> int:
        """Most users one connection may watch (``presence.watch``; more: too_many_watched)."""
        return int(self._get("PRESENCE_MAX_WATCHED", 200))

    @property
    def ALLOWED_ORIGINS(self) -> list[str]:
        """Exact ``scheme://host[:port]`` origins allowed to open sockets ([] = allowed hosts)."""
        return list(self._get("PRESENCE_ALLOWED_ORIGINS", []))

    @property
    def MAX_JSON_DEPTH(self) -> int:
        """Deepest nesting of arrays/objects a client frame may have (deeper: bad_json)."""
        return int(self._get("PRESENCE_MAX_JSON_DEPTH", 32))

    @property
    def MAX_JSON_NUMBER_DIGITS(self) -> int:
        """Longest number (in digits) a client frame may hold (longer: bad_json)."""
        return int(self._get("PRESENCE_MAX_JSON_NUMBER_DIGITS", 64))

    @property
    def RATE_LIMIT(self) -> float:
        """Sustained frames per second allowed per connection (token bucket refill rate)."""
        return float(self._get("PRESENCE_RATE_LIMIT", 20.0))

    @property
    def RATE_BURST(self) -> int:
        """Token bucket size: frames a connection may send in a burst."""
        return int(self._get("PRESENCE_RATE_BURST", 40))

    @property
    def FLOOD_DROPS(self) -> int:
        """Dropped frames within FLOOD_WINDOW that close the connection with 4429."""
        return int(self._get("PRESENCE_FLOOD_DROPS", 100))

    @property
    def FLOOD_WINDOW(self) -> float:
        """Seconds over which dropped frames are counted towards FLOOD_DROPS."""
        return float(self._get("PRESENCE_FLOOD_WINDOW", 10.0))

    @property
    def MAX_ROOMS_PER_CONNECTION(self) -> int:
        """Rooms one connection may be in; bounds the work of each heartbeat."""
        return int(self._get("PRESENCE_MAX_ROOMS_PER_CONNECTION", 50))

    @property
    def LIST_LIMIT(self) -> int:
        """Most users returned by one presence listing (``count`` is always the full count)."""
        return int(self._get("PRESENCE_LIST_LIMIT", 1000))

    @property
    def LEAVE_GRACE(self) -> float:
        """Seconds a closed last connection's leaves are held for a reconnect (0 = off)."""
        return float(self._get("PRESENCE_LEAVE_GRACE", 5.0))

    @property
    def ACTIVITY_RESOLUTION(self) -> float:
        """Seconds between two writes of a user's ``last_active`` (``activity`` frames)."""
        return float(self._get("PRESENCE_ACTIVITY_RESOLUTION", 60.0))

    @property
    def API_TOKENS(self) -> list[str]:
        """Bearer tokens of server-to-server callers of ``POST /api/presence/status/``."""
        value = self._get("PRESENCE_API_TOKENS", [])
        if isinstance(value, str):
            value = value.split(",")
        return [t.strip() for t in value if t.strip()]

    @property
    def TOKEN_MAX_AGE(self) -> int:
        """Seconds a WebSocket token from ``POST /api/presence/token/`` stays valid."""
        return int(self._get("PRESENCE_TOKEN_MAX_AGE", 60))

    @property
    def TRUSTED_PROXY_HEADER(self) -> str:
        """Header a trusted proxy puts the client IP in (e.g. ``X-Forwarded-For``); empty = none."""
        return str(self._get("PRESENCE_TRUSTED_PROXY_HEADER", ""))

    @property
    def TRUSTED_PROXIES(self) -> list[str]:
        """Addresses or networks (CIDR) of the proxies whose forwarded headers are believed, for
        uvicorn (``--forwarded-allow-ips``, the Procfile) and ``TRUSTED_PROXY_HEADER``; none = no
        forwarded header is believed."""
        raw = self._get("PRESENCE_TRUSTED_PROXIES", [])
        items = raw.split(",") if isinstance(raw, str) else raw
        return [str(item).strip() for item in items or [] if str(item).strip()]

    @property
    def HTTP_REDIS_DEADLINE(self) -> float:
        """Seconds one HTTP request may wait on Redis in all (not per command) before its
        answer is a JSON 503."""
        return float(self._get("PRESENCE_HTTP_REDIS_DEADLINE", 2.5))

    @property
    def API_LIST_ALL_USERS(self) -> bool:
        """Whether any logged-in user may list every online user over HTTP (off: staff only;
        a room's listing goes through the room authorizer either way)."""
        return bool(self._get("PRESENCE_API_LIST_ALL_USERS", False))

    @property
    def CONTENT_SECURITY_POLICY(self) -> str:
        """Content-Security-Policy header of every response (``{nonce}``: the request's nonce,
        presence/ops/csp.py); empty: none is sent."""
        return str(self._get("PRESENCE_CONTENT_SECURITY_POLICY", DEFAULT_CSP))

    @property
    def GLOBAL_EVENTS(self) -> bool:
        """Whether every connection receives global join/leave/status events (``room`` null)."""
        return bool(self._get("PRESENCE_GLOBAL_EVENTS", True))

    @property
    def EVENT_LOG_MAXLEN(self) -> int:
        """Entries the event log keeps in all: each shard's stream is trimmed (approximately,
        ``MAXLEN ~``) to its even part of this (``presence.store.clients.log_maxlen``)."""
        return int(self._get("PRESENCE_EVENT_LOG_MAXLEN", 100_000))

    @property
    def DIFF_WINDOW(self) -> float:
        """Seconds over which protocol v2 coalesces a scope's events into one presence.diff."""
        return float(self._get("PRESENCE_DIFF_WINDOW", 0.1))

    @property
    def SYNC_LIMIT(self) -> int:
        """Most users one presence.sync snapshot carries (``complete`` is false beyond it)."""
        return int(self._get("PRESENCE_SYNC_LIMIT", 10_000))

    @property
    def OUTBOX_MAX(self) -> int:
        """Frames queued for one socket that does not read before it is closed (1013)."""
        return int(self._get("PRESENCE_OUTBOX_MAX", 2_000))

    @property
    def HEARTBEAT_BATCH_MAX(self) -> int:
        """Most connections refreshed by one heartbeat script call."""
        return int(self._get("PRESENCE_HEARTBEAT_BATCH_MAX", 500))

    @property
    def HEARTBEAT_HOLD(self) -> float:
        """Seconds a heartbeat is held and retried while the store is away (a failover, a
        restart), then answered with ``unavailable``; the ack comes late, not as an error."""
        return float(self._get("PRESENCE_HEARTBEAT_HOLD", 20.0))

    @property
    def HEARTBEAT_HOLD_MAX(self) -> int:
        """Most heartbeats one process holds while the store is away; more get ``unavailable``."""
        return int(self._get("PRESENCE_HEARTBEAT_HOLD_MAX", 20_000))

    @property
    def STORE_WARNING_INTERVAL(self) -> float:
        """Seconds between a process's warnings that the store is away (each with a count)."""
        return float(self._get("PRESENCE_STORE_WARNING_INTERVAL", 10.0))

    @property
    def END_BATCH_MAX(self) -> int:
        """Most closed connections one end batch removes (presence/live/endings.py).

        A batch is one script call per shard it touches (a user half and a room half). 1,000
        (was 200): a mass disconnect's ends are written in a fifth of the round trips, each
        waiting its turn on a loop busy with the closing sockets (5,000 ends in 1.7 s, not
        2.2 s). What it costs Redis (measured, outside the suite: one ``end_connections`` of N
        connections with a room each): 64 shards, 0.3 ms per script at 1,000 (0.07 at 200);
        one shard, 16 ms per script at 1,000 (2.9 at 200), the longest Redis is held.
        """
        return int(self._get("PRESENCE_END_BATCH_MAX", 1000))

    @property
    def END_QUEUE_MAX(self) -> int:
        """Connection ends one process holds unwritten before a closing socket waits for room."""
        return int(self._get("PRESENCE_END_QUEUE_MAX", 20_000))

    @property
    def END_DRAIN_TIMEOUT(self) -> float:
        """Seconds a graceful shutdown waits for queued connection ends to be written."""
        return float(self._get("PRESENCE_END_DRAIN_TIMEOUT", 4.0))

    @property
    def COUNTER_FLUSH_INTERVAL(self) -> float:
        """Seconds buffered message counters wait for a heartbeat batch to ride along with."""
        return float(self._get("PRESENCE_COUNTER_FLUSH_INTERVAL", 1.0))

    @property
    def SWEEP_INTERVAL(self) -> float:
        """Seconds between expiry sweeps (Celery beat)."""
        return float(self._get("PRESENCE_SWEEP_INTERVAL", 5.0))

    @property
    def SWEEP_BATCH_SIZE(self) -> int:
        """Connections one sweep claims at a time; bounds one Lua call and one bulk UPDATE."""
        return int(self._get("PRESENCE_SWEEP_BATCH_SIZE", 500))

    @property
    def SWEEP_CLAIM_TIMEOUT(self) -> float:
        """Seconds after which a claim by a crashed sweep may be taken over by another."""
        return float(self._get("PRESENCE_SWEEP_CLAIM_TIMEOUT", 30.0))

    @property
    def STATS_FLUSH_INTERVAL(self) -> float:
        """Seconds between stats flushes (Celery beat)."""
        return float(self._get("STATS_FLUSH_INTERVAL", 10.0))

    @property
    def SESSION_LOG_BATCH(self) -> int:
        """Event-log entries one session-row write reads at most (presence/jobs/sessionlog.py)."""
        return int(self._get("PRESENCE_SESSION_LOG_BATCH", 500))

    @property
    def SESSION_LOG_BLOCK(self) -> float:
        """Seconds a web process's session writer waits for new entries per read (XREADGROUP)."""
        return float(self._get("PRESENCE_SESSION_LOG_BLOCK", 1.0))

    @property
    def SESSION_LOG_CLAIM_IDLE(self) -> float:
        """Seconds an entry read but not acknowledged waits before another reader of its group
        takes it over (XAUTOCLAIM): every event-log consumer (sessions, hooks, webhooks)."""
        return float(self._get("PRESENCE_SESSION_LOG_CLAIM_IDLE", 10.0))

    @property
    def REAP_INTERVAL(self) -> float:
        """Seconds between runs of the session reaper ``presence.reap_sessions`` (Celery beat)."""
        return float(self._get("PRESENCE_REAP_INTERVAL", 300.0))

    # ---- observability (live/processes.py, obs/metrics.py, ops/health.py)
    @property
    def VERSION(self) -> str:
        """Version of the deployed code, shown in the process registry (e.g. a git commit)."""
        return str(self._get("PRESENCE_VERSION", "dev"))

    @property
    def PROCESS_REFRESH(self) -> float:
        """Seconds between refreshes of a web process's registry record (expires after 3)."""
        return float(self._get("PRESENCE_PROCESS_REFRESH", 5.0))

    @property
    def RECONCILE_INTERVAL(self) -> float:
        """Seconds between ghost reconciliations (Celery beat)."""
        return float(self._get("PRESENCE_RECONCILE_INTERVAL", 30.0))

    @property
    def READY_SWEEP_MAX_AGE(self) -> float:
        """Seconds after which /readyz calls the last successful sweep stale (503); 0 = never."""
        return float(self._get("PRESENCE_READY_SWEEP_MAX_AGE", 60.0))

    @property
    def METRICS_TOKEN(self) -> str:
        """Bearer token /metrics accepts when DEBUG is off ("" = none)."""
        return str(self._get("METRICS_TOKEN", "") or "")

    @property
    def METRICS_ALLOWED_NETWORKS(self) -> list[str]:
        """Networks (CIDR) whose client addresses may read /metrics without the token."""
        return [str(n) for n in self._get("METRICS_ALLOWED_NETWORKS", []) or []]

    @property
    def CELERY_CONSUMERS(self) -> bool:
        """Whether each Celery worker of an app given to ``presence.celery.install`` runs the
        event log's consumers (what ``manage.py presence_consume`` runs) in its own threads."""
        return bool(self._get("PRESENCE_CELERY_CONSUMERS", False))

    # ---- server-side hooks (presence/hooks/, docs/hooks.md)
    @property
    def HOOKS_INTERVAL(self) -> float:
        """Seconds between runs of the signal sender and the webhook router (Celery beat)."""
        return float(self._get("PRESENCE_HOOKS_INTERVAL", 1.0))

    @property
    def HOOKS_BATCH(self) -> int:
        """Event-log entries the signal sender and the webhook router read per batch."""
        return int(self._get("PRESENCE_HOOKS_BATCH", 500))

    @property
    def HOOKS_RETRY_FOR(self) -> float:
        """Seconds a failing signal receiver is retried for one event before it is given up."""
        return float(self._get("PRESENCE_HOOKS_RETRY_FOR", 3600.0))

    @property
    def HOOKS_BACKOFF_BASE(self) -> float:
        """First retry delay (s) of a failing receiver or webhook; doubles per attempt."""
        return float(self._get("PRESENCE_HOOKS_BACKOFF_BASE", 1.0))

    @property
    def HOOKS_BACKOFF_MAX(self) -> float:
        """Longest retry delay (s) of a failing receiver or webhook (before jitter)."""
        return float(self._get("PRESENCE_HOOKS_BACKOFF_MAX", 300.0))

    @property
    def WEBHOOK_URL(self) -> str:
        """URL of the endpoint configured from the environment ('' = none)."""
        return str(self._get("PRESENCE_WEBHOOK_URL", ""))

    @property
    def WEBHOOK_SECRET(self) -> str:
        """Signing secret of the endpoint configured from the environment."""
        return str(self._get("PRESENCE_WEBHOOK_SECRET", ""))

    @property
    def WEBHOOK_EVENTS(self) -> list[str]:
        """Event types the environment's endpoint receives (empty = all)."""
        return [str(e) for e in self._get("PRESENCE_WEBHOOK_EVENTS", [])]

    @property
    def WEBHOOK_BATCH_SIZE(self) -> int:
        """Most events one webhook POST carries."""
        return int(self._get("PRESENCE_WEBHOOK_BATCH_SIZE", 100))

    @property
    def WEBHOOK_BATCH_WINDOW(self) -> float:
        """Seconds a lone event may be held for a fuller batch (0: sent at once; events that
        pile up while a POST is in flight make the next batch either way)."""
        return float(self._get("PRESENCE_WEBHOOK_BATCH_WINDOW", 0.0))

    @property
    def WEBHOOK_TIMEOUT(self) -> float:
        """Seconds a webhook POST may take (connect and each read) before it counts as failed."""
        return float(self._get("PRESENCE_WEBHOOK_TIMEOUT", 5.0))

    @property
    def WEBHOOK_RETRY_FOR(self) -> float:
        """Seconds an event is retried for before it becomes a dead letter."""
        return float(self._get("PRESENCE_WEBHOOK_RETRY_FOR", 21600.0))

    @property
    def WEBHOOK_RUN_BUDGET(self) -> float:
        """Seconds one delivery run of an endpoint starts new POSTs for."""
        return float(self._get("PRESENCE_WEBHOOK_RUN_BUDGET", 10.0))

    @property
    def WEBHOOK_ALLOWED_HOSTS(self) -> list[str]:
        """Host names (or addresses) webhooks may be sent to even when they resolve to a
        loopback, private or otherwise internal address (a deliberate internal receiver)."""
        raw = self._get("PRESENCE_WEBHOOK_ALLOWED_HOSTS", [])
        items = raw.split(",") if isinstance(raw, str) else raw
        return [str(item).strip().lower() for item in items or [] if str(item).strip()]

    @property
    def WEBHOOK_ALLOW_PRIVATE(self) -> bool:
        """Whether webhooks may go to any internal address (loopback, private, link-local ...);
        off: only ``WEBHOOK_ALLOWED_HOSTS`` may (docs/hooks.md, "Where webhooks may go")."""
        return bool(self._get("PRESENCE_WEBHOOK_ALLOW_PRIVATE", False))

    @property
    def WEBHOOK_KEEP(self) -> float:
        """Seconds delivered events and delivery records are kept for the admin."""
        return float(self._get("PRESENCE_WEBHOOK_KEEP", 86400.0))


app_settings = AppSettings()
