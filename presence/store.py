"""The only module that talks to Redis for presence: key layout, Lua scripts, clients.

Every key carries the hash tag ``{<PRESENCE_KEY_PREFIX>}`` so each script touches one Redis
Cluster slot. Layout (``P`` = the prefix):

==============================  =====  ==================================================
key                             type   content
==============================  =====  ==================================================
``{P}:conns``                   ZSET   cid -> expiry ms; the expiry index the sweep reads
``{P}:users``                   ZSET   uid -> latest expiry ms; "who is online"
``{P}:conn:<cid>``              HASH   uid, username, channel, exp, at (connected ms)
``{P}:conn:<cid>:rooms``        SET    rooms the connection joined
``{P}:user:<uid>``              HASH   username, status
``{P}:user:<uid>:conns``        ZSET   cid -> expiry ms
``{P}:room:<room>``             ZSET   uid -> latest expiry ms of their connections in it
``{P}:room:<room>:user:<uid>``  SET    the user's connections in the room
``{P}:stats``                   HASH   counters accumulated for the stats flush
``{P}:sweeping``                ZSET   cid -> claim deadline ms (claimed by a sweep)
``{P}:sweeping:exp``            HASH   cid -> expiry ms at claim time
``{P}:stats:claim:<id>``        HASH   counters renamed away by flush <id>, until applied
``{P}:stats:claims``            ZSET   flush id -> claim time ms (claims not yet released)
``{P}:<task>:lock``             STR    token of the run holding the task lock (sweep,
                                       flush, reap)
``{P}:<task>:period``           STR    claim of the task's current period (expires)
``{P}:<task>:last``             HASH   last run of the task (duration, counts), run totals
``{P}:flush:hbmark``            STR    expiry score below which last_heartbeat_at is known
``{P}:handlers:disabled``       SET    message types an operator disabled (from the DB)
``{P}:handlers:version``        STR    counter bumped on every change of that set
``{P}:events``                  STREAM the presence event log (presence/live/eventlog.py)
``{P}:addr:<ip>:conns``         ZSET   cid -> connect ms: connections from one address
``{P}:addr:<ip>:rate``          HASH   tokens, ts: the address's connect-rate bucket
``{P}:user:<uid>:block``        STR    an operator's block of the user (expires with it)
``{P}:user:<uid>:revoked``      STR    ms: credentials issued before it are refused
``{P}:login:<hash>:revoked``    STR    a revoked login session (expires with the revocation)
``{P}:token:<id>``              STR    a single-use token's mark once presented
``{P}:procs``                   ZSET   process id -> last refresh ms (presence/live/processes.py)
``{P}:proc:<id>``               HASH   one web process's record (host, pid, sockets, ...)
``{P}:proc:<id>:conns``         SET    connection ids the process holds a socket for
``{P}:reconcile:last``          HASH   last ghost reconciliation (ghosts, scanned, ...)
==============================  =====  ==================================================

Scores, not key TTLs, decide who is online: a member counts while its score is in the
future. Keys also expire (at expiry + ``PRESENCE_KEY_GRACE``) so that nothing leaks even when
no sweep ever runs. Callers pass "now"; scripts never read the Redis clock.

Each operation is split into a pure *plan* (keys and arguments) and a run on a sync or an
async client, so the WebSocket consumers (async) and Celery tasks and views (sync) share it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError, WatchError

from presence.conf import app_settings
from presence.protocol.types import PresenceUser

LUA_DIR = Path(__file__).resolve().parent / "lua"


def now_ms() -> int:
    """Wall-clock milliseconds, the time base of every score."""
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- keys
class Keys:
    """Builds every presence key. Nothing else in the project spells a key."""

    def __init__(self, prefix: str | None = None) -> None:
        self.tag = "{" + (prefix or app_settings.KEY_PREFIX) + "}"

    @property
    def conns(self) -> str:
        return f"{self.tag}:conns"

    @property
    def users(self) -> str:
        return f"{self.tag}:users"

    @property
    def stats(self) -> str:
        return f"{self.tag}:stats"

    @property
    def sweeping(self) -> str:
        return f"{self.tag}:sweeping"

    @property
    def events(self) -> str:
        """The presence event log (a stream); see presence/live/eventlog.py and docs/presence.md."""
        return f"{self.tag}:events"

    @property
    def sweeping_exp(self) -> str:
        return f"{self.tag}:sweeping:exp"

    # ---- sweep and stats flush keys (presence/jobs/sweep.py, presence/jobs/flush.py)
    def task_lock(self, task: str) -> str:
        """Lock of a periodic task (``sweep`` or ``flush``): one run at a time."""
        return f"{self.tag}:{task}:lock"

    def task_period(self, task: str) -> str:
        """Claim of a periodic task's current period: one beat-scheduled run per period."""
        return f"{self.tag}:{task}:period"

    def task_last(self, task: str) -> str:
        """Metrics of a periodic task: its last run and totals over all runs."""
        return f"{self.tag}:{task}:last"

    @property
    def stats_claims(self) -> str:
        return f"{self.tag}:stats:claims"

    def stats_claim(self, flush_id: str) -> str:
        return f"{self.tag}:stats:claim:{flush_id}"

    @property
    def heartbeat_mark(self) -> str:
        return f"{self.tag}:flush:hbmark"

    @property
    def handlers_disabled(self) -> str:
        return f"{self.tag}:handlers:disabled"

    @property
    def handlers_version(self) -> str:
        return f"{self.tag}:handlers:version"

    def conn(self, cid: str) -> str:
        return f"{self.tag}:conn:{cid}"

    def conn_rooms(self, cid: str) -> str:
        return f"{self.tag}:conn:{cid}:rooms"

    def user(self, uid: int | str) -> str:
        return f"{self.tag}:user:{uid}"

    def user_conns(self, uid: int | str) -> str:
        return f"{self.tag}:user:{uid}:conns"

    def room(self, room: str) -> str:
        return f"{self.tag}:room:{room}"

    def room_user(self, room: str, uid: int | str) -> str:
        return f"{self.tag}:room:{room}:user:{uid}"

    # ---- the connect gate (connect.lua; presence/actions/revocation.py, docs/operations.md)
    def addr_conns(self, ip: str) -> str:
        return f"{self.tag}:addr:{ip or '-'}:conns"

    def addr_rate(self, ip: str) -> str:
        return f"{self.tag}:addr:{ip or '-'}:rate"

    def user_block(self, uid: int | str) -> str:
        return f"{self.tag}:user:{uid}:block"

    def user_revoked(self, uid: int | str) -> str:
        return f"{self.tag}:user:{uid}:revoked"

    def login_revoked(self, login: str) -> str:
        return f"{self.tag}:login:{login or '-'}:revoked"

    def token_used(self, token_id: str) -> str:
        return f"{self.tag}:token:{token_id or '-'}"

    @property
    def conn_prefix(self) -> str:
        """What every connection hash's key starts with (connect.lua prunes by it)."""
        return f"{self.tag}:conn:"

    def fixed(self) -> list[str]:
        """Keys every batch script (heartbeat, end) takes first, in KEYS order."""
        return [self.conns, self.users, self.stats, self.sweeping, self.sweeping_exp]

    def conn_group(self, cid: str, uid: int | str, rooms: Iterable[str]) -> list[str]:
        """The per-connection key group of heartbeat.lua and end.lua."""
        group = [self.conn(cid), self.conn_rooms(cid), self.user(uid), self.user_conns(uid)]
        for room in rooms:
            group += [self.room(room), self.room_user(room, uid)]
        return group

    # ---- process registry (presence/live/processes.py)
    @property
    def procs(self) -> str:
        """Index of registered web processes: id -> last refresh ms."""
        return f"{self.tag}:procs"

    def proc(self, proc_id: str) -> str:
        """One process's record (a hash that expires when the process stops refreshing)."""
        return f"{self.tag}:proc:{proc_id}"

    def proc_conns(self, proc_id: str) -> str:
        """The connection ids one process holds sockets for."""
        return f"{self.tag}:proc:{proc_id}:conns"

    # ---- server-side hooks (presence/hooks/)
    @property
    def hook_holds(self) -> str:
        """Users whose signal receivers failed: uid -> "due ms:attempts:first failure ms"."""
        return f"{self.tag}:hooks:holds"

    @property
    def webhook_backlog(self) -> str:
        """Undelivered webhook events per endpoint (as of the last routing run): name -> n."""
        return f"{self.tag}:webhooks:backlog"


def keys() -> Keys:
    """Keys for the configured prefix (read live so tests may override it)."""
    return Keys()


# --------------------------------------------------------------------------- stats fields
# Field names inside the {P}:stats hash. Only registered message types get a field of their
# own, so a client cannot grow the hash by inventing types.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


def message_field(msg_type: str) -> str:
    """Counter of received messages of one (registered) type."""
    return f"msg:{msg_type}"


def error_field(code: str) -> str:
    """Counter of error frames sent, by error code."""
    return f"err:{code}"


def latency_bucket(seconds: float) -> str:
    """The histogram bucket (upper bound, as text) a handler duration falls in."""
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "inf"


def handler_call_fields(msg_type: str, seconds: float) -> tuple[str, str]:
    """Counters one handler call increments: its calls and its latency bucket."""
    return f"h:{msg_type}:calls", f"h:{msg_type}:lat:{latency_bucket(seconds)}"


def handler_error_field(msg_type: str, code: str) -> str:
    """Counter of a handler's failures: ``timeouts`` for handler_timeout, else ``errors``."""
    return f"h:{msg_type}:{'timeouts' if code == 'handler_timeout' else 'errors'}"


# --------------------------------------------------------------------------- scripts
INCLUDE = "--!include "


def _inline_includes(source: str) -> str:
    """Replace each ``--!include NAME`` line with ``lua/lib/NAME.lua`` (shared Lua code)."""
    lines = []
    for line in source.splitlines(keepends=True):
        if line.startswith(INCLUDE):
            lines.append((LUA_DIR / "lib" / f"{line[len(INCLUDE) :].strip()}.lua").read_text())
        else:
            lines.append(line)
    return "".join(lines)


class LuaScript:
    """A Lua file run by EVALSHA; loaded (SCRIPT LOAD) only when the server does not know it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _inline_includes((LUA_DIR / f"{name}.lua").read_text())
        # Redis names a script by the SHA1 of its source, so the digest is known up front.
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run on a sync client."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new or restarted server: load once, then retry
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def arun(self, client: aredis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run on an async client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]


@cache
def script(name: str) -> LuaScript:
    """The named script from ``presence/lua/``."""
    return LuaScript(name)


# --------------------------------------------------------------------------- clients
_sync_clients: dict[str, redis.Redis] = {}
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def client_options(*, for_asyncio: bool = False) -> dict[str, Any]:
    """Options of every presence Redis client: bounded waits everywhere.

    A command waits at most PRESENCE_REDIS_SOCKET_TIMEOUT for its answer and a new connection
    PRESENCE_REDIS_CONNECT_TIMEOUT; a failed command is retried once (a pooled connection
    may be stale after a Redis restart). Without these, a paused Redis held callers for as
    long as it stayed paused, and redis-py's default three retries multiplied every wait.
    """
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    retry_class = AsyncRetry if for_asyncio else Retry
    return {
        "decode_responses": True,
        "health_check_interval": 30,
        # WARNING: asyncio clients get no socket_timeout. redis-py then wraps every send in
        # asyncio.wait_for, which on Python 3.11 can swallow a cancellation (a cancelled
        # heartbeat batch kept running, and a closing event loop waited on it). Their reads
        # are bounded by the callers with asyncio.timeout instead (see bounded()).
        "socket_timeout": None if for_asyncio else app_settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": app_settings.REDIS_CONNECT_TIMEOUT,
        "retry": retry_class(ExponentialBackoff(cap=0.2, base=0.05), 1),
    }


def bounded(extra: float = 0.0) -> asyncio.Timeout:
    """``async with bounded():`` around an asyncio Redis call: at most the socket timeout
    (plus ``extra``, e.g. a blocking read's BLOCK time), then TimeoutError."""
    return asyncio.timeout(app_settings.REDIS_SOCKET_TIMEOUT + extra)


def get_redis() -> redis.Redis:
    """Process-wide sync client (thread-safe connection pool) for views, admin and tasks."""
    url = app_settings.REDIS_URL
    client = _sync_clients.get(url)
    if client is None:
        client = _sync_clients[url] = redis.Redis.from_url(url, **client_options())
    return client


def get_async_redis(*, blocking: bool = False) -> aredis.Redis:
    """Async client of the running event loop (asyncio connections cannot cross loops).

    ``blocking``: a separate client for the background readers' blocking reads (XREAD BLOCK,
    XREADGROUP BLOCK). Each holds a connection for seconds; on the shared pool they would
    make the hot path open new connections (a handshake on a heartbeat's way).
    """
    loop = asyncio.get_running_loop()
    per_loop = _async_clients.setdefault(loop, {})
    url = app_settings.REDIS_URL
    key = url + "#blocking" if blocking else url
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = aredis.Redis.from_url(url, **client_options(for_asyncio=True))
    return client


def reset_clients() -> None:
    """Forget cached clients (after the Redis URL changed, e.g. in tests)."""
    for client in _sync_clients.values():
        client.close()
    _sync_clients.clear()
    _async_clients.clear()


# --------------------------------------------------------------------------- value types
@dataclass(frozen=True)
class ConnRef:
    """What a script needs to know about one live connection."""

    cid: str
    uid: int
    rooms: tuple[str, ...] = ()


@dataclass
class EndResult:
    """Outcome of end.lua for one connection."""

    cid: str
    state: int  # 1 ended now, 0 already ended, -1 rescued by a heartbeat
    global_left: bool = False
    rooms_left: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConnectResult:
    joined: bool
    status: str
    open_id: str = ""  # the event log id of the connection's `open` entry
    refused: str = ""  # why the gate refused the connection ("" = registered)
    retry_after_ms: int = 0


@dataclass(frozen=True)
class ConnectGate:
    """Who may connect: limits and credentials connect.lua checks before registering.

    The default gate checks nothing (internal callers, benchmarks of the store); the consumer
    builds one from the settings with :meth:`from_settings`.
    """

    max_per_user: int = 0
    max_per_address: int = 0
    address_rate: float = 0.0  # connects per second per address (token refill)
    address_burst: int = 0
    issued_ms: int = 0  # when the credentials were issued (a token's mint time)
    token_id: str = ""
    token_ttl_ms: int = 0
    login: str = ""  # hash of the login session the credentials belong to

    @classmethod
    def from_settings(
        cls, *, issued_ms: int = 0, token_id: str = "", login: str = ""
    ) -> ConnectGate:
        """The configured limits, with these credentials."""
        return cls(
            max_per_user=app_settings.MAX_CONNECTIONS_PER_USER,
            max_per_address=app_settings.MAX_CONNECTIONS_PER_ADDRESS,
            address_rate=app_settings.ADDRESS_CONNECT_RATE,
            address_burst=app_settings.ADDRESS_CONNECT_BURST,
            issued_ms=issued_ms,
            token_id=token_id,
            token_ttl_ms=int(app_settings.TOKEN_MAX_AGE * 1000) + 1000,
            login=login,
        )


def _ttl_ms() -> int:
    return int(app_settings.TTL * 1000)


def _grace_ms() -> int:
    return int(app_settings.KEY_GRACE * 1000)


def _log_maxlen() -> int:
    return app_settings.EVENT_LOG_MAXLEN


# --------------------------------------------------------------------------- connect
async def connect(
    client: aredis.Redis,
    *,
    cid: str,
    uid: int,
    username: str,
    channel: str,
    ip: str | None = None,
    user_agent: str = "",
    now: int | None = None,
    gate: ConnectGate | None = None,
) -> ConnectResult:
    """Register a connection and log it (``open``, and ``join`` for the user's first).

    WARNING: the whole connect path in Redis: one EVALSHA, the gate's checks included.
    ``ip`` and ``user_agent`` ride in the log entry the connection-session row is written from
    (presence/jobs/sessionlog.py). A refusal registers and logs nothing (``result.refused``).
    """
    k, g, ip = keys(), gate or ConnectGate(), ip or ""
    ks = [
        *(k.conns, k.users, k.stats, k.conn(cid), k.conn_rooms(cid)),
        *(k.user(uid), k.user_conns(uid), k.events),
        *(k.addr_conns(ip), k.addr_rate(ip), k.user_block(uid), k.user_revoked(uid)),
        *(k.login_revoked(g.login), k.token_used(g.token_id)),
    ]
    args = [now or now_ms(), _ttl_ms(), _grace_ms(), cid, uid, username, channel]
    args += [_log_maxlen(), ip, user_agent[:512]]
    args += [g.max_per_user, g.max_per_address, g.address_rate, g.address_burst]
    args += [g.issued_ms, g.token_id, g.token_ttl_ms, g.login, k.conn_prefix]
    first, second, third = await script("connect").arun(client, ks, args)
    if first == "refused":
        return ConnectResult(False, "", refused=str(second), retry_after_ms=int(third))
    return ConnectResult(joined=int(first) == 1, status=str(second), open_id=str(third))


# --------------------------------------------------------------------------- revocation
# ---- blocks, revoked credentials, and finding a user's sockets (presence.actions.revocation)
@dataclass(frozen=True)
class ConnTarget:
    """Where one live connection's socket can be reached, and with what credentials."""

    cid: str
    channel: str
    login: str


def user_connection_targets(
    client: redis.Redis, uid: int, *, now: int | None = None
) -> list[ConnTarget]:
    """The user's live connections with their channel names: two round trips, bounded by
    the per-user connection limit."""
    k = keys()
    cids: Any = client.zrangebyscore(k.user_conns(uid), f"({now or now_ms()}", "+inf")
    if not cids:
        return []
    pipe = client.pipeline(transaction=False)
    for cid in cids:
        pipe.hmget(k.conn(cid), ["channel", "login"])
    targets = []
    for cid, (channel, login) in zip(cids, pipe.execute(), strict=True):
        if channel:
            targets.append(ConnTarget(str(cid), str(channel), str(login or "")))
    return targets


def connection_login(client: redis.Redis, cid: str) -> str:
    """The login-session hash a live connection authenticated with ("" when unknown)."""
    return str(client.hget(keys().conn(cid), "login") or "")


def revoke_user_credentials(client: redis.Redis, uid: int, *, now: int | None = None) -> None:
    """Refuse credentials of ``uid`` issued until now (tokens minted before a kick)."""
    # Tokens live PRESENCE_TOKEN_MAX_AGE at most: the mark may go when the last one expired.
    ttl_ms = int(app_settings.TOKEN_MAX_AGE * 1000) + 60_000
    client.set(keys().user_revoked(uid), now or now_ms(), px=ttl_ms)


def revoke_login(client: redis.Redis, login: str, *, seconds: float) -> None:
    """Refuse new connections of the login session ``login`` for ``seconds``."""
    if login and seconds > 0:
        client.set(keys().login_revoked(login), 1, px=int(seconds * 1000))


def set_user_block(client: redis.Redis, uid: int, *, until_ms: int, reason: str) -> None:
    """Refuse new connections of ``uid`` until ``until_ms`` (the key expires then)."""
    client.set(keys().user_block(uid), reason or "blocked", pxat=until_ms)


def clear_user_block(client: redis.Redis, uid: int) -> None:
    """Lift an operator's block of ``uid``."""
    client.delete(keys().user_block(uid))


def user_block_ttl_ms(client: redis.Redis, uid: int) -> int:
    """Milliseconds left of ``uid``'s block (0 when not blocked)."""
    left: Any = client.pttl(keys().user_block(uid))
    return max(0, int(left))


# --------------------------------------------------------------------------- heartbeat
def _plan_heartbeat(
    conns: Sequence[ConnRef], counters: Mapping[str, int], now: int
) -> tuple[list[str], list[Any]]:
    k = keys()
    ks = k.fixed()
    args: list[Any] = [now, _ttl_ms(), _grace_ms(), len(counters)]
    for name, inc in counters.items():
        args += [name, inc]
    args.append(len(conns))
    for c in conns:
        ks += k.conn_group(c.cid, c.uid, c.rooms)
        args += [c.cid, len(c.rooms)]
    return ks, args


async def heartbeat_many(
    client: aredis.Redis,
    conns: Sequence[ConnRef],
    counters: Mapping[str, int] | None = None,
    *,
    now: int | None = None,
) -> list[bool]:
    """Refresh many connections (and add buffered counters) in one round trip.

    WARNING: this is the hot path. One EVALSHA, no other Redis command, no SQL.
    Returns, per connection, whether it is still known (False: its session ended).
    """
    ks, args = _plan_heartbeat(conns, counters or {}, now or now_ms())
    result = await script("heartbeat").arun(client, ks, args)
    return [int(r) == 1 for r in result]


async def add_counters(client: aredis.Redis, counters: Mapping[str, int]) -> None:
    """Add buffered counters when no heartbeat batch was there to carry them."""
    await heartbeat_many(client, [], counters)


# --------------------------------------------------------------------------- end
def _plan_end(
    conns: Sequence[ConnRef], mode: str, reason: str, now: int
) -> tuple[list[str], list[Any]]:
    k = keys()
    ks = [*k.fixed(), k.events]
    args: list[Any] = [now, mode, reason, _ttl_ms(), _log_maxlen(), len(conns)]
    for c in conns:
        ks += k.conn_group(c.cid, c.uid, c.rooms)
        args += [c.cid, c.uid, len(c.rooms), *c.rooms]
    return ks, args


def _parse_end(raw: list[list[Any]]) -> list[EndResult]:
    return [
        EndResult(
            cid=str(e[0]),
            state=int(e[1]),
            global_left=int(e[2]) == 1,
            rooms_left=[str(r) for r in e[3:]],
        )
        for e in raw
    ]


async def end_connections(
    client: aredis.Redis,
    conns: Sequence[ConnRef],
    *,
    reason: str = "closed",
    now: int | None = None,
    mode: str = "closed",
) -> list[EndResult]:
    """Remove connections whose socket closed; log their leaves and ``close`` (``reason``).

    ``mode="undo"``: a connect that did not finish; like a close, but a connection that was
    never registered logs nothing.
    """
    ks, args = _plan_end(conns, mode, reason, now or now_ms())
    return _parse_end(await script("end").arun(client, ks, args))


def end_swept_connections(
    client: redis.Redis, conns: Sequence[ConnRef], *, now: int | None = None
) -> list[EndResult]:
    """Remove connections a sweep claimed, unless they heartbeated since the claim."""
    ks, args = _plan_end(conns, "swept", "timeout", now or now_ms())
    return _parse_end(script("end").run(client, ks, args))


# --------------------------------------------------------------------------- rooms, status
def _plan_room_join(conn: ConnRef, room: str, now: int) -> tuple[list[str], list[Any]]:
    k = keys()
    return (
        [
            k.conn(conn.cid),
            k.conn_rooms(conn.cid),
            k.room(room),
            k.room_user(room, conn.uid),
            k.user(conn.uid),
            k.events,
        ],
        [now, _grace_ms(), conn.cid, conn.uid, room, _log_maxlen()],
    )


async def room_join(
    client: aredis.Redis, conn: ConnRef, room: str, *, now: int | None = None
) -> int:
    """Add the connection to ``room``: 1 user joined (logged), 0 already there, -1 gone."""
    ks, args = _plan_room_join(conn, room, now or now_ms())
    return int(await script("room_join").arun(client, ks, args))


def room_join_sync(client: redis.Redis, conn: ConnRef, room: str, *, now: int | None = None) -> int:
    """Sync twin of :func:`room_join` (tests and tasks)."""
    ks, args = _plan_room_join(conn, room, now or now_ms())
    return int(script("room_join").run(client, ks, args))


async def room_leave(client: aredis.Redis, conn: ConnRef, room: str) -> bool:
    """Take the connection out of ``room``; True when the user left it altogether (logged)."""
    k = keys()
    left = await script("room_leave").arun(
        client,
        [
            k.conn_rooms(conn.cid),
            k.room(room),
            k.room_user(room, conn.uid),
            k.user(conn.uid),
            k.events,
        ],
        [conn.cid, conn.uid, room, now_ms(), _log_maxlen()],
    )
    return int(left) == 1


async def get_status(client: aredis.Redis, uid: int) -> str:
    """The user's current status (``online`` when none was set)."""
    return str(await client.hget(keys().user(uid), "status") or "online")  # type: ignore[misc]


async def set_status(
    client: aredis.Redis, uid: int, username: str, status: str, rooms: Iterable[str] = ()
) -> set[str]:
    """Store the user's status (one per user, shared by all their connections) and log it.

    The ``status`` events go to the global scope and to every room of any of the user's
    live connections (``rooms``: the caller's own, known without asking). Returns those
    rooms; two round trips (reading the other connections' rooms, then status.lua).
    """
    k = keys()
    cids = await client.zrangebyscore(k.user_conns(uid), f"({now_ms()}", "+inf")
    all_rooms = set(rooms)
    if cids:
        pipe = client.pipeline(transaction=False)
        for cid in cids:
            pipe.smembers(k.conn_rooms(cid))
        all_rooms = all_rooms.union(*await pipe.execute())
    ordered = sorted(all_rooms)
    await script("status").arun(
        client,
        [k.user(uid), k.events],
        [now_ms(), _log_maxlen(), uid, username, status, len(ordered), *ordered],
    )
    return all_rooms


async def publish(client: aredis.Redis, room: str, frame_text: str) -> str:
    """Log an application frame for every connection in ``room``; returns the entry id."""
    return str(
        await script("publish").arun(
            client, [keys().events], [now_ms(), _log_maxlen(), room, frame_text]
        )
    )


# --------------------------------------------------------------------------- reads
def _plan_index(room: str | None) -> str:
    k = keys()
    return k.room(room) if room else k.users


def _queue_listing(pipe: Any, index: str, now: int, limit: int) -> None:
    low = f"({now}"
    pipe.zcount(index, low, "+inf")
    pipe.zrangebyscore(index, low, "+inf", start=0, num=limit)


def _queue_details(pipe: Any, uids: Sequence[str], now: int) -> None:
    k = keys()
    for uid in uids:
        pipe.hmget(k.user(uid), "username", "status")
        pipe.zcount(k.user_conns(uid), f"({now}", "+inf")


def _format_users(uids: Sequence[str], details: Sequence[Any]) -> list[PresenceUser]:
    users: list[PresenceUser] = []
    for i, uid in enumerate(uids):
        (username, status), connections = details[2 * i], details[2 * i + 1]
        if int(connections) == 0:
            continue  # lapsed between the two round trips
        users.append(
            {
                "id": int(uid),
                "username": username or "",
                "status": status or "online",
                "connections": int(connections),
            }
        )
    return users


async def alist_online(
    client: aredis.Redis, room: str | None = None, *, limit: int | None = None
) -> tuple[int, list[PresenceUser]]:
    """(count, users) online everywhere or in ``room``; two round trips."""
    now, limit = now_ms(), limit or app_settings.LIST_LIMIT
    pipe = client.pipeline(transaction=False)
    _queue_listing(pipe, _plan_index(room), now, limit)
    count, uids = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    _queue_details(pipe, uids, now)
    users = _format_users(uids, await pipe.execute()) if uids else []
    return int(count), users


def list_online(
    client: redis.Redis, room: str | None = None, *, limit: int | None = None
) -> tuple[int, list[PresenceUser]]:
    """Sync twin of :func:`alist_online` for views and tasks."""
    now, limit = now_ms(), limit or app_settings.LIST_LIMIT
    pipe = client.pipeline(transaction=False)
    _queue_listing(pipe, _plan_index(room), now, limit)
    count, uids = pipe.execute()
    pipe = client.pipeline(transaction=False)
    _queue_details(pipe, uids, now)
    users = _format_users(uids, pipe.execute()) if uids else []
    return int(count), users


def user_presence(client: redis.Redis, uid: int) -> tuple[str | None, int]:
    """(status, live connection count) of one user; status is None when offline."""
    pipe = client.pipeline(transaction=False)
    _queue_details(pipe, [str(uid)], now_ms())
    (_username, status), connections = pipe.execute()
    if int(connections) == 0:
        return None, 0
    return status or "online", int(connections)


# --------------------------------------------------------------------------- event log
# ---- event log (presence.live.eventlog): positions, reads and snapshots taken at a position.
LogEntry = tuple[str, dict[str, str]]


async def log_position(client: aredis.Redis) -> str:
    """The id of the newest log entry ("0-0" when the log is empty): where a reader starts."""
    last = await client.xrevrange(keys().events, "+", "-", count=1)
    return str(last[0][0]) if last else "0-0"


async def read_log(
    client: aredis.Redis, after: str, *, count: int, block_ms: int
) -> list[LogEntry]:
    """Entries after ``after``, oldest first; waits up to ``block_ms`` when there are none."""
    async with bounded(block_ms / 1000):
        reply = await client.xread({keys().events: after}, count=count, block=block_ms)
    if not reply:
        return []
    # decode_responses: [[stream, [(id, {field: value}), ...]]]
    return [(str(eid), fields) for eid, fields in reply[0][1]]


@dataclass
class Snapshot:
    """Who is in a scope at log position ``seq`` (room None = everyone online)."""

    room: str | None
    seq: str
    count: int
    users: list[PresenceUser]
    complete: bool


async def snapshots(
    client: aredis.Redis, rooms: Sequence[str | None], *, limit: int
) -> list[Snapshot]:
    """Members of each scope and the log position they are consistent with.

    Two round trips: one MULTI reading the log position and each scope's members together
    (nothing can be logged between them), then the members' names and statuses. Events
    after ``seq`` are what a client applies on top; a name or status read in the second
    trip may already be newer, which those later events then repeat harmlessly.
    """
    now = now_ms()
    pipe = client.pipeline(transaction=True)
    pipe.xrevrange(keys().events, "+", "-", count=1)
    for room in rooms:
        _queue_listing(pipe, _plan_index(room), now, limit)
    raw = await pipe.execute()
    seq = str(raw[0][0][0]) if raw[0] else "0-0"
    listed = [(int(raw[1 + 2 * i]), list(raw[2 + 2 * i])) for i in range(len(rooms))]
    pipe = client.pipeline(transaction=False)
    for _, uids in listed:
        _queue_details(pipe, uids, now)
    details = await pipe.execute() if any(uids for _, uids in listed) else []
    out, at = [], 0
    for room, (count, uids) in zip(rooms, listed, strict=True):
        users = _format_users(uids, details[at : at + 2 * len(uids)])
        at += 2 * len(uids)
        out.append(Snapshot(room, seq, count, users, complete=len(uids) >= count))
    return out


async def alist_page(
    client: aredis.Redis, room: str | None, cursor: int, limit: int
) -> tuple[int, list[PresenceUser], int]:
    """One page of a scope's members: (exact count, users, next cursor; 0 = done).

    ZSCAN walks the index in a stable order whatever the heartbeats do to the scores, so a
    listing of any size can be paged; a member present throughout is returned at least
    once (a user may show up on two pages while the index is rehashed).
    """
    index, now = _plan_index(room), now_ms()
    pipe = client.pipeline(transaction=False)
    pipe.zcount(index, f"({now}", "+inf")
    pipe.zscan(index, cursor, count=limit)
    count, (next_cursor, members) = await pipe.execute()
    uids = [str(uid) for uid, score in members if score > now]
    pipe = client.pipeline(transaction=False)
    _queue_details(pipe, uids, now)
    users = _format_users(uids, await pipe.execute()) if uids else []
    return int(count), users, int(next_cursor)


# --------------------------------------------------------------------------- handler control
# ---- handler control (presence.handlers.lifecycle)
# The RegisteredHandler rows are the truth about which handlers are disabled; these two keys
# carry that truth to every web process, which polls the version (one round trip per poll,
# never per message) and re-reads the set when it moved.
HandlerControl = tuple[int | None, frozenset[str]]
# WATCH conflicts need a concurrent publisher; a handful of retries covers any real contention.
PUBLISH_ATTEMPTS = 20


def publish_disabled_handlers(
    client: redis.Redis, read: Callable[[], Iterable[str]], *, only_if_changed: bool = False
) -> int | None:
    """Replace the disabled set with ``read()`` and bump the version; returns the new version.

    ``read`` (the database query) runs while the version key is WATCHed: a publisher that
    read the database before a concurrent publisher wrote Redis fails its EXEC and reads
    again, so the set always ends up equal to the newest database state.

    ``only_if_changed`` (process start-up) writes nothing, returning None, when Redis already
    holds that set, or holds nothing and nothing is disabled: starting a process then leaves
    Redis untouched. Operator changes always publish, so every watcher sees a new version.
    """
    k = keys()
    for _ in range(PUBLISH_ATTEMPTS):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(k.handlers_version)
                types = sorted(set(read()))
                if only_if_changed:
                    # Immediate commands while WATCHing: part of the same optimistic check.
                    version = pipe.get(k.handlers_version)
                    current = sorted(pipe.smembers(k.handlers_disabled))  # type: ignore[arg-type]
                    if current == types and (version is not None or not types):
                        pipe.unwatch()
                        return None
                pipe.multi()
                pipe.delete(k.handlers_disabled)
                if types:
                    pipe.sadd(k.handlers_disabled, *types)
                pipe.incr(k.handlers_version)
                return int(pipe.execute()[-1])
            except WatchError:
                continue
    raise RuntimeError(f"could not publish disabled handlers in {PUBLISH_ATTEMPTS} attempts")


def _queue_handler_control(pipe: Any) -> None:
    k = keys()
    pipe.get(k.handlers_version)
    pipe.smembers(k.handlers_disabled)


def _parse_handler_control(version: Any, members: Iterable[str]) -> HandlerControl:
    return (int(version) if version is not None else None), frozenset(members)


def read_handler_control(client: redis.Redis) -> HandlerControl:
    """(version, disabled types); version is None when nothing was ever published."""
    pipe = client.pipeline(transaction=False)
    _queue_handler_control(pipe)
    return _parse_handler_control(*pipe.execute())


async def aread_handler_control(client: aredis.Redis) -> HandlerControl:
    """Async twin of :func:`read_handler_control`: one round trip."""
    pipe = client.pipeline(transaction=False)
    _queue_handler_control(pipe)
    return _parse_handler_control(*await pipe.execute())


# --------------------------------------------------------------------------- sweep
# ---- sweep (presence.jobs.sweep): claims of expired connections, task locks and run metrics.
@dataclass(frozen=True)
class SweepClaim:
    """One expired connection a sweep claimed; ``uid`` is None when its hash is gone."""

    cid: str
    expiry: int  # ms: last heartbeat + TTL, the session's end time
    uid: int | None = None
    username: str = ""
    channel: str = ""
    rooms: tuple[str, ...] = ()

    @property
    def ref(self) -> ConnRef:
        assert self.uid is not None
        return ConnRef(self.cid, self.uid, self.rooms)


@dataclass
class ClaimBatch:
    """What one claim_expired.lua call handed to this sweep."""

    deadline: int  # the claim deadline every claim carries; ack with it
    reclaimed: int  # how many were taken over from a sweep that died
    claims: list[SweepClaim]


def _score_ms(value: Any) -> int:
    # Scores come back as text; a large integer score may be written in exponent form.
    return int(float(value))


def claim_expired(
    client: redis.Redis, *, batch: int, claim_timeout_ms: int, now: int | None = None
) -> ClaimBatch:
    """Claim up to ``batch`` expired connections, with what ending them needs.

    Two round trips: the claim script, then one pipeline reading each claimed connection's
    hash and rooms. Nothing else; with nothing expired this is one cheap round trip.
    """
    k, now = keys(), now or now_ms()
    raw = script("claim_expired").run(
        client,
        [k.conns, k.sweeping, k.sweeping_exp, k.users],
        [now, batch, claim_timeout_ms, _grace_ms()],
    )
    deadline, reclaimed = int(raw[0]), int(raw[1])
    pairs = [(str(raw[i]), _score_ms(raw[i + 1])) for i in range(2, len(raw), 2)]
    if not pairs:
        return ClaimBatch(deadline, reclaimed, [])
    pipe = client.pipeline(transaction=False)
    for cid, _ in pairs:
        pipe.hmget(k.conn(cid), ["uid", "username", "channel"])
        pipe.smembers(k.conn_rooms(cid))
    details = pipe.execute()
    claims = []
    for i, (cid, expiry) in enumerate(pairs):
        (uid, username, channel), rooms = details[2 * i], details[2 * i + 1]
        claims.append(
            SweepClaim(
                cid=cid,
                expiry=expiry,
                uid=int(uid) if uid is not None else None,
                username=username or "",
                channel=channel or "",
                rooms=tuple(sorted(rooms)),
            )
        )
    return ClaimBatch(deadline, reclaimed, claims)


def ack_swept(client: redis.Redis, deadline: int, cids: Sequence[str]) -> int:
    """Release this sweep's claims of ``cids`` (claims re-taken by another sweep stay)."""
    if not cids:
        return 0
    k = keys()
    return int(script("sweep_ack").run(client, [k.sweeping, k.sweeping_exp], [deadline, *cids]))


def acquire_task_lock(client: redis.Redis, task: str, ttl_ms: int) -> str | None:
    """Take the lock of ``task`` for ``ttl_ms``; the token to release it, or None if held."""
    token = uuid.uuid4().hex
    if client.set(keys().task_lock(task), token, nx=True, px=max(1, ttl_ms)):
        return token
    return None


def task_lock_held(client: redis.Redis, task: str) -> bool:
    """Whether a run of ``task`` holds its lock now (a hint: it may end at any moment)."""
    return bool(client.exists(keys().task_lock(task)))


def claim_task_period(client: redis.Redis, task: str, ttl_ms: int) -> bool:
    """Claim the current period of ``task`` (SET NX PX): False when a run holds it."""
    return bool(client.set(keys().task_period(task), now_ms(), nx=True, px=max(1, ttl_ms)))


def release_task_lock(client: redis.Redis, task: str, token: str) -> bool:
    """Release the lock if this token still holds it (compare-and-delete in Lua)."""
    return int(script("lock_release").run(client, [keys().task_lock(task)], [token])) == 1


def record_task_run(
    client: redis.Redis,
    task: str,
    last: Mapping[str, int | str],
    totals: Mapping[str, int],
    counters: Mapping[str, int] | None = None,
) -> None:
    """Store a run's metrics: ``last`` replaces the last-run fields, ``totals`` add up.

    ``counters`` go into the live stats hash too, so the per-minute buckets keep a history
    of task activity (skipped runs included) next to the hot-path counters.
    """
    k = keys()
    pipe = client.pipeline(transaction=False)
    if last:
        pipe.hset(k.task_last(task), mapping=dict(last))
    for name, inc in totals.items():
        pipe.hincrby(k.task_last(task), name, inc)
    for name, inc in (counters or {}).items():
        if inc:
            pipe.hincrby(k.stats, name, inc)
    pipe.execute()


def read_task_run(client: redis.Redis, task: str) -> dict[str, str]:
    """The metrics hash of ``task`` (last run and totals), for admin and metrics."""
    return dict(client.hgetall(keys().task_last(task)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- stats flush
# ---- stats flush (presence.jobs.flush): claims of the live counters, live heartbeat scores.
def claim_stats(client: redis.Redis, flush_id: str, *, now: int | None = None) -> bool:
    """Move the live counters to the claim of ``flush_id``; False when there were none."""
    k = keys()
    ks = [k.stats, k.stats_claim(flush_id), k.stats_claims]
    return int(script("stats_claim").run(client, ks, [now or now_ms(), flush_id])) == 1


def list_stats_claims(client: redis.Redis, limit: int) -> list[tuple[str, int]]:
    """Unreleased claims, oldest first: (flush id, claim time ms)."""
    raw = client.zrange(keys().stats_claims, 0, limit - 1, withscores=True)
    return [(str(fid), _score_ms(score)) for fid, score in raw]  # type: ignore[union-attr]


def read_stats_claim(client: redis.Redis, flush_id: str) -> dict[str, int]:
    """The counters of one claim (empty when the claim was released already)."""
    raw: dict[str, str] = client.hgetall(keys().stats_claim(flush_id))  # type: ignore[assignment]
    return {name: int(value) for name, value in raw.items()}


def release_stats_claim(client: redis.Redis, flush_id: str) -> bool:
    """Drop a claim whose counters are committed to the database."""
    k = keys()
    ks = [k.stats_claim(flush_id), k.stats_claims]
    return int(script("stats_release").run(client, ks, [flush_id])) == 1


def live_connections_page(
    client: redis.Redis, low: int, skip: int, count: int
) -> list[tuple[str, int]]:
    """Connections with expiry >= ``low``, ascending, after skipping ``skip``: (cid, expiry)."""
    raw = client.zrangebyscore(keys().conns, low, "+inf", start=skip, num=count, withscores=True)
    return [(str(cid), _score_ms(score)) for cid, score in raw]  # type: ignore[union-attr]


def get_heartbeat_mark(client: redis.Redis) -> int | None:
    """Expiry score below which every live session's last heartbeat is in the database."""
    value = client.get(keys().heartbeat_mark)
    return int(value) if value is not None else None  # type: ignore[arg-type]


def set_heartbeat_mark(client: redis.Redis, mark: int) -> None:
    client.set(keys().heartbeat_mark, mark)


# --------------------------------------------------------------------------- ---- session reaper
def known_connections(client: redis.Redis, cids: Sequence[str]) -> set[str]:
    """The ``cids`` presence still tracks (in the expiry index or claimed by a sweep)."""
    if not cids:
        return set()
    k = keys()
    pipe = client.pipeline(transaction=False)
    for cid in cids:
        pipe.zscore(k.conns, cid)
        pipe.zscore(k.sweeping, cid)
    found = pipe.execute()
    return {
        cid
        for i, cid in enumerate(cids)
        if found[2 * i] is not None or found[2 * i + 1] is not None
    }


# --------------------------------------------------------------------------- session log
# ---- session log (presence.jobs.sessionlog)
# The connection-session writers read the event log ({P}:events) through one consumer group
# and acknowledge an entry only once its rows are committed. A group name is not a key.
SESSION_LOG_GROUP = "sessions"


@dataclass(frozen=True)
class SessionLogEntry:
    """One event-log entry as a reader got it; ``fields`` is empty when it was trimmed away."""

    id: str
    fields: dict[str, str]


def stream_id_order(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream id (``<ms>-<seq>``): ids do not sort as strings."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _is_busygroup(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("BUSYGROUP")


def _is_nogroup(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


def _plan_read_session_log(
    consumer: str,
    count: int,
    after: str | None,
    block_ms: int | None,
    group: str = SESSION_LOG_GROUP,
) -> tuple[list[Any], dict[str, Any]]:
    # ">": entries never delivered to the group; an id: this consumer's own pending entries
    # after it (trimmed ones come back with no fields). Only new entries are worth waiting for.
    streams = {keys().events: after if after is not None else ">"}
    return [group, consumer, streams], {
        "count": count,
        "block": block_ms if after is None else None,
    }


def _parse_read_session_log(raw: Any) -> list[SessionLogEntry]:
    return [
        SessionLogEntry(str(entry_id), dict(fields or {}))
        for _stream, entries in raw or []
        for entry_id, fields in entries
    ]


def _plan_claim_session_log(
    consumer: str, min_idle_ms: int, start: str, count: int, group: str = SESSION_LOG_GROUP
) -> list[Any]:
    # Not JUSTID: redis-py drops the cursor of a JUSTID reply. Claimed entries join this
    # consumer's pending list, where the caller reads them (trimmed ones included, by id).
    return [
        "XAUTOCLAIM",
        keys().events,
        group,
        consumer,
        max(0, min_idle_ms),
        start,
        "COUNT",
        count,
    ]


def _parse_claim_session_log(raw: Any) -> tuple[str, int, int]:
    """(next start, entries claimed, entries trimmed away); Redis >= 7 reports the latter."""
    deleted = raw[2] if len(raw) > 2 else []
    return str(raw[0]), len(raw[1]), len(deleted)


# XAUTOCLAIM rounds per claim call: bounds the work one call does for one dead consumer.
SESSION_LOG_CLAIM_ROUNDS = 10
# Undelivered entries counted by session_log_backlog (one XRANGE page).
SESSION_LOG_BACKLOG_PAGE = 10_000


def ensure_session_group(client: redis.Redis, *, group: str = SESSION_LOG_GROUP) -> bool:
    """Create the writers' group (or ``group``: the hooks' readers share these helpers),
    reading from the log's start; False when it existed."""
    try:
        client.xgroup_create(keys().events, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not _is_busygroup(exc):
            raise
        return False
    return True


async def aensure_session_group(client: aredis.Redis) -> bool:
    """Async twin of :func:`ensure_session_group`."""
    try:
        await client.xgroup_create(keys().events, SESSION_LOG_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not _is_busygroup(exc):
            raise
        return False
    return True


def read_session_log(
    client: redis.Redis,
    consumer: str,
    *,
    count: int,
    after: str | None = None,
    block_ms: int | None = None,
    group: str = SESSION_LOG_GROUP,
) -> list[SessionLogEntry]:
    """Entries for ``consumer``: new ones (``after`` None, waiting up to ``block_ms``), or its
    own pending entries with ids greater than ``after`` (``"0"``: all of them).

    A missing group (Redis lost its data) is created again and the read returns nothing.
    """
    args, kwargs = _plan_read_session_log(consumer, count, after, block_ms, group)
    try:
        raw = client.xreadgroup(*args, **kwargs)
    except redis.ResponseError as exc:
        if not _is_nogroup(exc):
            raise
        ensure_session_group(client, group=group)
        return []
    return _parse_read_session_log(raw)


async def aread_session_log(
    client: aredis.Redis,
    consumer: str,
    *,
    count: int,
    after: str | None = None,
    block_ms: int | None = None,
) -> list[SessionLogEntry]:
    """Async twin of :func:`read_session_log`."""
    args, kwargs = _plan_read_session_log(consumer, count, after, block_ms)
    try:
        async with bounded((block_ms or 0) / 1000):
            raw = await client.xreadgroup(*args, **kwargs)
    except redis.ResponseError as exc:
        if not _is_nogroup(exc):
            raise
        await aensure_session_group(client)
        return []
    return _parse_read_session_log(raw)


def claim_session_log(
    client: redis.Redis,
    consumer: str,
    *,
    min_idle_ms: int,
    count: int,
    group: str = SESSION_LOG_GROUP,
) -> tuple[int, int]:
    """Take over entries other consumers read but left unacknowledged for ``min_idle_ms``.

    Returns (claimed, trimmed): claimed entries are now ``consumer``'s pending entries;
    trimmed ones were dropped by Redis >= 7 itself (6.2 hands them over, fields gone).
    """
    start, claimed, trimmed = "0-0", 0, 0
    for _ in range(SESSION_LOG_CLAIM_ROUNDS):
        try:
            raw = client.execute_command(
                *_plan_claim_session_log(consumer, min_idle_ms, start, count, group)
            )
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            ensure_session_group(client, group=group)
            break
        start, n, gone = _parse_claim_session_log(raw)
        claimed, trimmed = claimed + n, trimmed + gone
        if start == "0-0":
            break
    return claimed, trimmed


async def aclaim_session_log(
    client: aredis.Redis, consumer: str, *, min_idle_ms: int, count: int
) -> tuple[int, int]:
    """Async twin of :func:`claim_session_log`."""
    start, claimed, trimmed = "0-0", 0, 0
    for _ in range(SESSION_LOG_CLAIM_ROUNDS):
        try:
            raw = await client.execute_command(
                *_plan_claim_session_log(consumer, min_idle_ms, start, count)
            )
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await aensure_session_group(client)
            break
        start, n, gone = _parse_claim_session_log(raw)
        claimed, trimmed = claimed + n, trimmed + gone
        if start == "0-0":
            break
    return claimed, trimmed


def ack_session_log(
    client: redis.Redis, ids: Sequence[str], *, group: str = SESSION_LOG_GROUP
) -> int:
    """Acknowledge entries whose rows are committed; returns how many were pending."""
    if not ids:
        return 0
    acked: Any = client.xack(keys().events, group, *ids)
    return int(acked)


async def aack_session_log(client: aredis.Redis, ids: Sequence[str]) -> int:
    """Async twin of :func:`ack_session_log`."""
    if not ids:
        return 0
    return int(await client.xack(keys().events, SESSION_LOG_GROUP, *ids))


def _first_not_in(pending: Iterable[Mapping[str, Any]], skip: set[str]) -> str | None:
    for entry in pending:
        if str(entry["message_id"]) not in skip:
            return str(entry["message_id"])
    return None


def oldest_pending_session_log(client: redis.Redis, *, skip: set[str]) -> str | None:
    """The smallest id pending in the group (any consumer) that is not in ``skip``.

    One XPENDING of ``len(skip) + 1`` entries: at most ``len(skip)`` of the smallest ids are
    in ``skip``, so the answer is among them if there is one.
    """
    raw: Any = client.xpending_range(
        keys().events, SESSION_LOG_GROUP, min="-", max="+", count=len(skip) + 1
    )
    return _first_not_in(raw, skip)


async def aoldest_pending_session_log(client: aredis.Redis, *, skip: set[str]) -> str | None:
    """Async twin of :func:`oldest_pending_session_log`."""
    raw = await client.xpending_range(
        keys().events, SESSION_LOG_GROUP, min="-", max="+", count=len(skip) + 1
    )
    return _first_not_in(raw, skip)


def session_log_backlog(client: redis.Redis, *, group: str = SESSION_LOG_GROUP) -> dict[str, int]:
    """What the writers (or ``group``) have not done yet: ``pending`` (read, not
    acknowledged) and ``undelivered`` (appended after the group's last delivered id; bounded
    by one XRANGE page, so at most ``SESSION_LOG_BACKLOG_PAGE``). Zeros when the group does
    not exist."""
    k = keys()
    try:
        summary: Any = client.xpending(k.events, group)
        groups: Any = client.xinfo_groups(k.events)
    except redis.ResponseError:
        return {"pending": 0, "undelivered": 0}
    last = next((str(g["last-delivered-id"]) for g in groups if g["name"] == group), "0-0")
    undelivered: Any = client.xrange(k.events, f"({last}", "+", count=SESSION_LOG_BACKLOG_PAGE)
    return {"pending": int(summary["pending"]), "undelivered": len(undelivered)}


def prune_session_consumers(client: redis.Redis, *, idle_ms: int, keep: str = "") -> int:
    """Forget consumers (e.g. of web processes long gone) that hold nothing and were idle
    for ``idle_ms``; a live one that was removed reappears at its next read."""
    k = keys()
    try:
        consumers: Any = client.xinfo_consumers(k.events, SESSION_LOG_GROUP)
    except redis.ResponseError:
        return 0
    removed = 0
    for c in consumers:
        if c["name"] != keep and int(c["pending"]) == 0 and int(c["idle"]) >= idle_ms:
            client.xgroup_delconsumer(k.events, SESSION_LOG_GROUP, c["name"])
            removed += 1
    return removed


# --------------------------------------------------------------------------- hooks
# ---- server-side hooks (presence.hooks): two more consumer groups over the event log, one
# for the Django signals, one routing events into the webhook outbox. They share the session
# log's group helpers above (``group=``).
HOOKS_GROUP = "hooks"
WEBHOOKS_GROUP = "webhooks"


@dataclass(frozen=True)
class HookHold:
    """A user whose events wait for a failing signal receiver (retried with back-off)."""

    due_ms: int
    attempts: int
    first_ms: int


def read_hook_holds(client: redis.Redis) -> dict[str, HookHold]:
    """Every held user (uid as a string) and when their events are tried again."""
    raw: Any = client.hgetall(keys().hook_holds)
    holds = {}
    for uid, value in raw.items():
        due, attempts, first = (int(x) for x in str(value).split(":"))
        holds[str(uid)] = HookHold(due, attempts, first)
    return holds


def set_hook_hold(client: redis.Redis, uid: str, hold: HookHold) -> None:
    """Hold ``uid``'s events until ``hold.due_ms``."""
    client.hset(keys().hook_holds, uid, f"{hold.due_ms}:{hold.attempts}:{hold.first_ms}")


def clear_hook_holds(client: redis.Redis, uids: Iterable[str]) -> None:
    """Release users whose held event went through (or was given up)."""
    uids = list(uids)
    if uids:
        client.hdel(keys().hook_holds, *uids)


def write_webhook_backlog(client: redis.Redis, backlog: Mapping[str, int]) -> None:
    """Replace the per-endpoint backlog the metrics scrape reads."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys().webhook_backlog)
    if backlog:
        pipe.hset(keys().webhook_backlog, mapping=dict(backlog))
    pipe.execute()


def read_webhook_backlog(client: redis.Redis) -> dict[str, int]:
    """Undelivered webhook events per endpoint name (as of the last routing run)."""
    raw: Any = client.hgetall(keys().webhook_backlog)
    return {str(k): int(v) for k, v in raw.items()}


# --------------------------------------------------------------------------- operator console
# ---- operator console (presence.console): reads for the admin pages, a fixed number of
# round trips per page whatever its rows. Each step is one MULTI pipeline: a consistent
# snapshot of what it reads, and one unit the tests count (tests/presence/test_console_*).
# Connections listed per user row; the row's connection count stays exact.
CONSOLE_CONNS_PER_USER = 20
CONSOLE_TASKS = ("sweep", "flush", "reap")


@dataclass(frozen=True)
class ConsoleConnection:
    """One live connection as the console shows it."""

    cid: str
    channel: str
    connected_ms: int | None  # None when its hash is gone (lapsed, not swept yet)
    expiry_ms: int
    rooms: tuple[str, ...]


@dataclass(frozen=True)
class ConsoleUser:
    """One online user with (up to CONSOLE_CONNS_PER_USER of) their live connections."""

    uid: int
    username: str
    status: str
    expiry_ms: int  # latest expiry of any of their connections (in the listed scope)
    connection_count: int
    connections: tuple[ConsoleConnection, ...]

    @property
    def rooms(self) -> list[str]:
        return sorted({room for c in self.connections for room in c.rooms})

    @property
    def connected_ms(self) -> int | None:
        """When the oldest listed connection opened."""
        times = [c.connected_ms for c in self.connections if c.connected_ms is not None]
        return min(times) if times else None


@dataclass(frozen=True)
class ConsoleOverview:
    """What the dashboard reads from Redis, in one round trip."""

    users: int
    connections: int
    live_stats: dict[str, int]  # counters not flushed yet ({P}:stats)
    task_runs: dict[str, dict[str, str]]  # task -> its metrics hash ({P}:<task>:last)


def console_index_page(
    client: redis.Redis, room: str | None, start: int, count: int
) -> tuple[int, list[tuple[int, int]]]:
    """(live members, page) of the users index (or a room's), most recent heartbeat first.

    One round trip: ZCOUNT and ZREVRANGE by rank. Live members have the highest scores, so
    ranks ``0 .. live-1`` are exactly them: any page costs O(log N + count), page 2,000 as
    little as page 1. The order follows heartbeats, so it shifts between two reads.
    """
    index, now = _plan_index(room), now_ms()
    pipe = client.pipeline(transaction=True)
    pipe.zcount(index, f"({now}", "+inf")
    if count > 0:  # a stop of -1 would be "to the end"
        pipe.zrevrange(index, start, start + count - 1, withscores=True)
    total, *rest = pipe.execute()
    members = rest[0] if rest else []
    page = [(int(uid), _score_ms(score)) for uid, score in members if _score_ms(score) > now]
    return int(total), page


def console_live_scores(
    client: redis.Redis, room: str | None, uids: Sequence[int]
) -> dict[int, int]:
    """Which of ``uids`` are online (in ``room``): uid -> latest expiry. One ZMSCORE."""
    if not uids:
        return {}
    now = now_ms()
    scores: Any = client.zmscore(_plan_index(room), [str(uid) for uid in uids])
    return {
        uid: _score_ms(score)
        for uid, score in zip(uids, scores, strict=True)
        if score is not None and _score_ms(score) > now
    }


def console_statuses(client: redis.Redis, uids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """uid -> (username, status) from the users' hashes; one pipeline."""
    if not uids:
        return {}
    k = keys()
    pipe = client.pipeline(transaction=True)
    for uid in uids:
        pipe.hmget(k.user(uid), ["username", "status"])
    return {
        uid: (username or "", status or "online")
        for uid, (username, status) in zip(uids, pipe.execute(), strict=True)
    }


def console_users(client: redis.Redis, members: Sequence[tuple[int, int]]) -> list[ConsoleUser]:
    """Details of the listed (uid, expiry) members: two round trips for any number of rows.

    The first pipeline reads each user's hash, live connection count and newest connections;
    the second each of those connections' hash and rooms. Users whose last connection
    lapsed between the reads are left out.
    """
    if not members:
        return []
    k, now = keys(), now_ms()
    low = f"({now}"
    pipe = client.pipeline(transaction=True)
    for uid, _ in members:
        pipe.hmget(k.user(uid), ["username", "status"])
        pipe.zcount(k.user_conns(uid), low, "+inf")
        pipe.zrevrangebyscore(
            k.user_conns(uid), "+inf", low, start=0, num=CONSOLE_CONNS_PER_USER, withscores=True
        )
    first = pipe.execute()
    cids = [str(cid) for i in range(len(members)) for cid, _ in first[3 * i + 2]]
    pipe = client.pipeline(transaction=True)
    for cid in cids:
        pipe.hmget(k.conn(cid), ["at", "channel"])
        pipe.smembers(k.conn_rooms(cid))
    second = pipe.execute() if cids else []
    details = {
        cid: (second[2 * i], second[2 * i + 1]) for i, cid in enumerate(cids)
    }  # cid -> ((at, channel), rooms)
    users = []
    for i, (uid, expiry) in enumerate(members):
        (username, status), count, conns = first[3 * i], first[3 * i + 1], first[3 * i + 2]
        if int(count) == 0:
            continue
        listed = []
        for cid, score in conns:
            (at, channel), rooms = details[str(cid)]
            listed.append(
                ConsoleConnection(
                    cid=str(cid),
                    channel=channel or "",
                    connected_ms=int(at) if at is not None else None,
                    expiry_ms=_score_ms(score),
                    rooms=tuple(sorted(rooms)),
                )
            )
        users.append(
            ConsoleUser(
                uid=uid,
                username=username or "",
                status=status or "online",
                expiry_ms=expiry,
                connection_count=int(count),
                connections=tuple(listed),
            )
        )
    return users


def console_connection(client: redis.Redis, cid: str) -> tuple[int | None, str]:
    """(uid, channel) of a live connection; (None, "") when presence does not know it."""
    uid, channel = client.hmget(keys().conn(cid), ["uid", "channel"])  # type: ignore[misc]
    return (int(uid) if uid is not None else None), str(channel or "")


def console_recent_events(client: redis.Redis, count: int) -> list[LogEntry]:
    """The newest ``count`` entries of the event log, newest first (one XREVRANGE)."""
    raw: Any = client.xrevrange(keys().events, "+", "-", count=count)
    return [(str(eid), dict(fields)) for eid, fields in raw]


def console_overview(client: redis.Redis) -> ConsoleOverview:
    """Users and connections online, unflushed counters and the periodic tasks' last runs."""
    k, now = keys(), now_ms()
    pipe = client.pipeline(transaction=True)
    pipe.zcount(k.users, f"({now}", "+inf")
    pipe.zcount(k.conns, f"({now}", "+inf")
    pipe.hgetall(k.stats)
    for task in CONSOLE_TASKS:
        pipe.hgetall(k.task_last(task))
    users, conns, stats, *runs = pipe.execute()
    return ConsoleOverview(
        users=int(users),
        connections=int(conns),
        live_stats={name: int(value) for name, value in stats.items()},
        task_runs={task: dict(run) for task, run in zip(CONSOLE_TASKS, runs, strict=True)},
    )


# --------------------------------------------------------------------------- process registry
# ---- process registry and ghost reconciliation (presence.live.processes). Each web process keeps
# a record hash, an entry in the {P}:procs index and the set of connection ids it holds; all
# three expire when the process stops refreshing them, so a crashed process disappears.
def _plan_publish_process(
    pipe: Any,
    proc_id: str,
    record: Mapping[str, str | int | float],
    *,
    added: Iterable[str],
    removed: Iterable[str],
    full: Iterable[str] | None,
    ttl_ms: int,
    now: int,
) -> None:
    k = keys()
    conns = k.proc_conns(proc_id)
    if full is not None:
        # A rewrite: the set was lost (expired, Redis restarted) or never written.
        pipe.delete(conns)
        added, removed = full, ()
    # WARNING: bounded by the process's own socket churn since its last refresh (or its
    # socket count on a rewrite), sent in slices so no single command grows without limit.
    removed, added = list(removed), list(added)
    for i in range(0, len(removed), PROCESS_CONNS_SLICE):
        pipe.srem(conns, *removed[i : i + PROCESS_CONNS_SLICE])
    for i in range(0, len(added), PROCESS_CONNS_SLICE):
        pipe.sadd(conns, *added[i : i + PROCESS_CONNS_SLICE])
    pipe.pexpire(conns, ttl_ms)
    pipe.scard(conns)
    pipe.hset(k.proc(proc_id), mapping=dict(record))
    pipe.pexpire(k.proc(proc_id), ttl_ms)
    pipe.zadd(k.procs, {proc_id: now})
    # The index forgets processes whose record has expired (at most a handful per call).
    pipe.zremrangebyscore(k.procs, "-inf", f"({now - ttl_ms}")


# Members per SADD/SREM when a process publishes its connection ids.
PROCESS_CONNS_SLICE = 1000


async def publish_process(
    client: aredis.Redis,
    proc_id: str,
    record: Mapping[str, str | int | float],
    *,
    added: Iterable[str] = (),
    removed: Iterable[str] = (),
    full: Iterable[str] | None = None,
    ttl_ms: int,
    now: int | None = None,
) -> int:
    """Refresh one process's record and connection set (one MULTI); returns the set's size.

    ``added``/``removed`` are the changes since the last call; ``full`` rewrites the set.
    The caller compares the size returned with what it holds and rewrites on a mismatch.
    """
    pipe = client.pipeline(transaction=True)
    _plan_publish_process(
        pipe,
        proc_id,
        record,
        added=added,
        removed=removed,
        full=full,
        ttl_ms=ttl_ms,
        now=now or now_ms(),
    )
    results = await pipe.execute()
    # Results: [DEL], SREM..., SADD..., PEXPIRE, SCARD, HSET, PEXPIRE, ZADD, ZREMRANGEBYSCORE
    return int(results[-5])


def _plan_remove_process(pipe: Any, proc_id: str) -> None:
    k = keys()
    pipe.delete(k.proc(proc_id), k.proc_conns(proc_id))
    pipe.zrem(k.procs, proc_id)


def remove_process(client: redis.Redis, proc_id: str) -> None:
    """Drop a process's record and connection set (it is shutting down)."""
    pipe = client.pipeline(transaction=True)
    _plan_remove_process(pipe, proc_id)
    pipe.execute()


async def aremove_process(client: aredis.Redis, proc_id: str) -> None:
    """Async twin of :func:`remove_process`."""
    pipe = client.pipeline(transaction=True)
    _plan_remove_process(pipe, proc_id)
    await pipe.execute()


# Most processes one listing reads; far above any deployment's web process count.
PROCESS_LIST_MAX = 1000


def read_processes(client: redis.Redis) -> list[dict[str, str]]:
    """Records of the processes registered and not expired, oldest refresh first.

    Two round trips: the index, then every record in one pipeline. Index entries whose
    record expired are skipped (the next refresh of any process prunes them).
    """
    k = keys()
    ids: Any = client.zrange(k.procs, 0, PROCESS_LIST_MAX - 1)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for proc_id in ids:
        pipe.hgetall(k.proc(proc_id))
    return [dict(rec) for rec in pipe.execute() if rec]


def scan_live_connections(
    client: redis.Redis, cursor: int, count: int, *, now: int | None = None
) -> tuple[int, list[str]]:
    """One ZSCAN page of the expiry index: (next cursor, ids of connections still live)."""
    now = now or now_ms()
    next_cursor, members = client.zscan(keys().conns, cursor, count=count)  # type: ignore[misc]
    return int(next_cursor), [str(cid) for cid, score in members if score > now]


def connections_held(client: redis.Redis, proc_ids: Sequence[str], cids: Sequence[str]) -> set[str]:
    """The ``cids`` some process of ``proc_ids`` holds (one pipeline of SMISMEMBER)."""
    if not cids or not proc_ids:
        return set()
    k = keys()
    pipe = client.pipeline(transaction=False)
    for proc_id in proc_ids:
        pipe.execute_command("SMISMEMBER", k.proc_conns(proc_id), *cids)
    held: set[str] = set()
    for flags in pipe.execute():
        held.update(cid for cid, flag in zip(cids, flags, strict=True) if int(flag) == 1)
    return held


def connections_connected_before(
    client: redis.Redis, cids: Sequence[str], before_ms: int, *, now: int | None = None
) -> list[str]:
    """The ``cids`` still live that connected before ``before_ms`` (one pipeline)."""
    if not cids:
        return []
    k, now = keys(), now or now_ms()
    pipe = client.pipeline(transaction=False)
    for cid in cids:
        pipe.zscore(k.conns, cid)
        pipe.hget(k.conn(cid), "at")
    raw = pipe.execute()
    out = []
    for i, cid in enumerate(cids):
        score, at = raw[2 * i], raw[2 * i + 1]
        if score is not None and score > now and at is not None and int(at) < before_ms:
            out.append(cid)
    return out


def read_task_runs(client: redis.Redis, tasks: Sequence[str]) -> dict[str, dict[str, str]]:
    """The run hashes of several tasks in one round trip (see :func:`read_task_run`)."""
    pipe = client.pipeline(transaction=False)
    for task in tasks:
        pipe.hgetall(keys().task_last(task))
    return {task: dict(raw) for task, raw in zip(tasks, pipe.execute(), strict=True)}


# --------------------------------------------------------------------------- scrape-time reads
# ---- read by the metrics collector on every scrape (presence.obs.metrics): O(1) or O(log N)
# commands only, never a scan of the keyspace or of a large index.
SCRAPE_TASKS = ("sweep", "flush", "reap", "sessionlog", "reconcile")


@dataclass
class ScrapeReadings:
    """What one scrape reads from Redis."""

    users_online: int
    connections_online: int
    tasks: dict[str, dict[str, str]]


def read_scrape(client: redis.Redis, *, now: int | None = None) -> ScrapeReadings:
    """Online counts (ZCOUNT, O(log N)) and the tasks' run hashes, in one round trip."""
    k, now = keys(), now or now_ms()
    pipe = client.pipeline(transaction=False)
    pipe.zcount(k.users, f"({now}", "+inf")
    pipe.zcount(k.conns, f"({now}", "+inf")
    for task in SCRAPE_TASKS:
        pipe.hgetall(k.task_last(task))
    users, conns, *tasks = pipe.execute()
    return ScrapeReadings(
        users_online=int(users),
        connections_online=int(conns),
        tasks={task: dict(raw) for task, raw in zip(SCRAPE_TASKS, tasks, strict=True)},
    )
