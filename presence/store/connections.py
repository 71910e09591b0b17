"""Connections: register (connect.lua), refresh (heartbeat.lua) and end (end.lua)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from presence.conf import app_settings
from presence.store.clients import grace_ms, log_maxlen, now_ms, ttl_ms
from presence.store.keys import keys
from presence.store.scripts import script
from presence.store.topology import aclient_for, client_for


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
    held: bool = False  # a leave was held for the grace window (release_held.lua logs it)


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


# --------------------------------------------------------------------------- connect
async def connect(
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
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    k, g, ip = keys(), gate or ConnectGate(), ip or ""
    ks = [
        *(k.conns, k.users, k.stats, k.conn(cid), k.conn_rooms(cid)),
        *(k.user(uid), k.user_conns(uid), k.events),
        *(k.addr_conns(ip), k.addr_rate(ip), k.user_block(uid), k.user_revoked(uid)),
        *(k.login_revoked(g.login), k.token_used(g.token_id), k.active),
        *(k.held, k.held_why),
    ]
    args = [now or now_ms(), ttl_ms(), grace_ms(), cid, uid, username, channel]
    args += [log_maxlen(), ip, user_agent[:512]]
    args += [g.max_per_user, g.max_per_address, g.address_rate, g.address_burst]
    args += [g.issued_ms, g.token_id, g.token_ttl_ms, g.login, k.conn_prefix]
    first, second, third = await script("connect").arun(client, ks, args)
    if first == "refused":
        return ConnectResult(False, "", refused=str(second), retry_after_ms=int(third))
    return ConnectResult(joined=int(first) == 1, status=str(second), open_id=str(third))


# --------------------------------------------------------------------------- heartbeat
def _plan_heartbeat(
    conns: Sequence[ConnRef], counters: Mapping[str, int], active: Mapping[int, int], now: int
) -> tuple[list[str], list[Any]]:
    k = keys()
    ks = [*k.fixed(), k.active]
    args: list[Any] = [now, ttl_ms(), grace_ms(), len(counters)]
    for name, inc in counters.items():
        args += [name, inc]
    args.append(len(active))
    for uid, at in active.items():
        args += [uid, at]
    args.append(len(conns))
    for c in conns:
        ks += k.conn_group(c.cid, c.uid, c.rooms)
        args += [c.cid, len(c.rooms)]
    return ks, args


# heartbeat_many's answer per connection (heartbeat.lua's header).
HB_ALIVE = 1  # refreshed
HB_ENDED = 0  # its session ended (swept, kicked): close the socket with 4408
HB_LOST = 2  # unknown but never ended: the store lost it; re-assert (reassert.lua)


async def heartbeat_many(
    conns: Sequence[ConnRef],
    counters: Mapping[str, int] | None = None,
    *,
    now: int | None = None,
    active: Mapping[int, int] | None = None,
) -> list[int]:
    """Refresh many connections (and add buffered counters) in one round trip.

    ``active``: uid -> Unix seconds of the users' latest ``activity`` frames, written in the
    same call (``last_active`` rides with the heartbeats, never a round trip of its own).

    WARNING: this is the hot path. One EVALSHA, no other Redis command, no SQL.
    Returns, per connection, :data:`HB_ALIVE`, :data:`HB_ENDED` or :data:`HB_LOST`
    (``HB_ALIVE == True``: callers that only ask "alive?" may compare with True).
    """
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    ks, args = _plan_heartbeat(conns, counters or {}, active or {}, now or now_ms())
    result = await script("heartbeat").arun(client, ks, args)
    return [int(r) for r in result]


async def add_counters(counters: Mapping[str, int]) -> None:
    """Add buffered counters when no heartbeat batch was there to carry them."""
    await heartbeat_many([], counters)


# --------------------------------------------------------------------------- end
# Close reasons that end the user's presence for good: their leaves are never held.
FINAL_REASONS = frozenset({"kicked", "logged_out", "revoked", "timeout"})


def leave_grace_ms(reason: str) -> int:
    """The grace window a close with ``reason`` holds its leaves for (0: none)."""
    if reason in FINAL_REASONS:
        return 0
    return int(app_settings.LEAVE_GRACE * 1000)


def _plan_end(
    conns: Sequence[ConnRef], mode: str, reason: str, now: int
) -> tuple[list[str], list[Any]]:
    k = keys()
    ks = [*k.fixed(), k.events, k.held, k.held_why]
    grace = leave_grace_ms(reason) if mode == "closed" else 0
    args: list[Any] = [now, mode, reason, ttl_ms(), log_maxlen(), grace, len(conns)]
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
            held=int(e[2]) == 2,
        )
        for e in raw
    ]


async def end_connections(
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
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    ks, args = _plan_end(conns, mode, reason, now or now_ms())
    return _parse_end(await script("end").arun(client, ks, args))


def end_swept_connections(
    conns: Sequence[ConnRef], *, now: int | None = None, shard: int = 0
) -> list[EndResult]:
    """Remove connections a sweep of ``shard`` claimed, unless they heartbeated since."""
    client = client_for(shard)
    ks, args = _plan_end(conns, "swept", "timeout", now or now_ms())
    return _parse_end(script("end").run(client, ks, args))


# --------------------------------------------------------------------------- re-assert
@dataclass(frozen=True)
class Liveness:
    """What a web process's live socket proves about its connection (reassert.lua)."""

    conn: ConnRef
    username: str
    channel: str
    status: str = "online"
    ip: str = ""
    login: str = ""


async def reassert(live: Liveness, *, now: int | None = None) -> tuple[int, int]:
    """Write back a live connection the store lost (a failover, a restart without data).

    Returns (state, entries logged): state 1 written back, 2 it was there (topped up),
    0 it was ended here (the caller closes the socket). No leave and no hook-visible join
    is logged (reassert.lua's header says why).
    """
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    k, c = keys(), live.conn
    ks = [k.conns, k.users, k.stats, k.events, *k.conn_group(c.cid, c.uid, c.rooms)]
    args: list[Any] = [now or now_ms(), ttl_ms(), grace_ms(), log_maxlen(), c.cid, c.uid]
    args += [live.username, live.channel, live.status, live.ip, live.login, len(c.rooms)]
    args += list(c.rooms)
    state, logged = await script("reassert").arun(client, ks, args)
    return int(state), int(logged)
