"""Connections: register (connect.lua), refresh (heartbeat.lua) and end (end.lua)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from presence.conf import app_settings
from presence.store.clients import grace_ms, log_maxlen, now_ms, ttl_ms
from presence.store.keys import keys
from presence.store.scripts import ScriptCall, arun_many, run_many, script
from presence.store.shards import ip_home, room_home, user_home
from presence.store.topology import aclient_for, client_for, split_by_node


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
def _address_gated(ip: str, gate: ConnectGate) -> bool:
    return bool(ip) and (gate.max_per_address > 0 or gate.address_rate > 0)


def _plan_connect(
    *,
    cid: str,
    uid: int,
    username: str,
    channel: str,
    ip: str,
    user_agent: str,
    now: int,
    gate: ConnectGate,
    mode: str,
) -> tuple[list[str], list[Any]]:
    k = keys(user_home(uid))
    ks = [
        *(k.conns, k.users, k.stats, k.conn(cid), k.conn_rooms(cid)),
        *(k.user(uid), k.user_conns(uid), k.events),
        *(k.user_block(uid), k.user_revoked(uid)),
        *(k.login_revoked(gate.login), k.token_used(gate.token_id), k.active),
        *(k.held, k.held_why),
    ]
    args = [now, ttl_ms(), grace_ms(), cid, uid, username, channel]
    args += [log_maxlen(), ip, user_agent[:512], gate.max_per_user]
    args += [gate.issued_ms, gate.token_id, gate.token_ttl_ms, gate.login, mode]
    return ks, args


def address_member(uid: int | str, cid: str) -> str:
    """A connection's member in its address's set (connect_gate.lua): the uid tells a
    prune which shard holds the connection's hash."""
    return f"{uid}|{cid}"


async def _gone_members(members: Sequence[str]) -> list[str]:
    """The members of an address's set whose connection hash is gone (one pipeline per
    node holding some)."""
    by_shard: dict[int, list[tuple[str, str]]] = {}
    for member in members:
        uid, _, cid = member.partition("|")
        by_shard.setdefault(user_home(uid), []).append((member, cid))
    gone = []
    for part in split_by_node(sorted(by_shard)):
        pipe = aclient_for(part[0]).pipeline(transaction=False)
        order = [item for shard in part for item in by_shard[shard]]
        for shard in part:
            for _, cid in by_shard[shard]:
                pipe.hexists(keys(shard).conn(cid), "uid")
        found = await pipe.execute()
        gone += [member for (member, _), alive in zip(order, found, strict=True) if not alive]
    return gone


def _address_gate_call(
    uid: int, cid: str, ip: str, now: int, g: ConnectGate
) -> tuple[Any, list[str], list[Any]]:
    k = keys(ip_home(ip))
    args: list[Any] = [now, address_member(uid, cid), g.max_per_address]
    args += [g.address_rate, g.address_burst]
    return aclient_for(k.shard), [k.addr_conns(ip), k.addr_rate(ip)], args


def address_pending_ms() -> int:
    """How long after passing the address gate a member without a connection hash still
    counts: it may be a connect between the gate and its registration (the next round trip),
    which concurrent connects from one address would otherwise not count. The consumer gives
    a connect ``PRESENCE_CONNECT_TIMEOUT`` (then closes it with 1013), plus a second's margin."""
    return int(app_settings.CONNECT_TIMEOUT * 1000) + 1000


async def _pass_address_gate(uid: int, cid: str, ip: str, now: int, g: ConnectGate) -> Any:
    """connect_gate.lua on the address's shard: ['ok'] or ['refused', why, retry_ms]."""
    client, ks, args = _address_gate_call(uid, cid, ip, now, g)
    answer = await script("connect_gate").arun(client, ks, [*args, "0"])
    if answer[0] != "full":
        return answer
    gated_at = {str(m): int(float(ms)) for m, ms in zip(answer[1::2], answer[2::2], strict=True)}
    gone = await _gone_members(list(gated_at))
    pending_ms = address_pending_ms()
    young = {m for m in gone if now - gated_at[m] < pending_ms}
    prunable = [m for m in gone if m not in young]
    answer = await script("connect_gate").arun(client, ks, [*args, "1", *prunable])
    if answer[0] == "refused" and young:
        # A place frees when the oldest of them ages out, if it never registers.
        retry = min(gated_at[m] for m in young) + pending_ms - now
        answer = [answer[0], answer[1], retry]
    return answer


async def _release_address_gate(uid: int, cid: str, ip: str, now: int, g: ConnectGate) -> None:
    """Give back what a passed address gate took (the place and the rate token)."""
    client, ks, args = _address_gate_call(uid, cid, ip, now, g)
    await script("connect_gate").arun(client, ks, [*args, "release"])


def _refused(answer: Sequence[Any]) -> ConnectResult:
    return ConnectResult(False, "", refused=str(answer[1]), retry_after_ms=int(answer[2]))


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

    WARNING: the connect path in Redis. Without an address gate (no address, or no
    per-address limits): one EVALSHA on the user's shard, the gate's user side included.
    With one: connect_gate.lua counts the connection on the address's shard, then connect.lua
    checks the user side and registers it -- two round trips, each on one shard (the address
    and the user are on different shards: no script may touch both). Only a refusal costs
    more: a user-side refusal gives the address's place and rate token back (a refused
    attempt spends neither), and an address refusal asks connect.lua's 'check' whether the
    user side refuses too, whose reason then comes first (and which spends a presented token).
    ``ip`` and ``user_agent`` ride in the log entry the connection-session row is written from
    (presence/jobs/sessionlog.py). A refusal registers and logs nothing (``result.refused``).
    """
    g, ip, now = gate or ConnectGate(), ip or "", now or now_ms()
    client = aclient_for(user_home(uid))
    lua = script("connect")
    plan = partial(
        _plan_connect,
        cid=cid,
        uid=uid,
        username=username,
        channel=channel,
        ip=ip,
        user_agent=user_agent,
        now=now,
        gate=g,
    )
    gated = _address_gated(ip, g)
    if gated:
        passed = await _pass_address_gate(uid, cid, ip, now, g)
        if passed[0] == "refused":
            checked = await lua.arun(client, *plan(mode="check"))
            return _refused(checked if checked[0] == "refused" else passed)
    first, second, third = await lua.arun(client, *plan(mode="register"))
    if first == "refused":
        if gated:
            await _release_address_gate(uid, cid, ip, now, g)
        return _refused((first, second, third))
    return ConnectResult(joined=int(first) == 1, status=str(second), open_id=str(third))


# --------------------------------------------------------------------------- heartbeat
@dataclass
class _Section:
    """One shard's part of a heartbeat batch (heartbeat.lua's arguments)."""

    conns: list[int] = field(default_factory=list)  # indexes into the batch
    members: list[tuple[str, int, str]] = field(default_factory=list)  # cid, uid, room
    active: list[tuple[int, int]] = field(default_factory=list)
    counters: Mapping[str, int] = field(default_factory=dict)


def _sections(
    conns: Sequence[ConnRef], counters: Mapping[str, int], active: Mapping[int, int]
) -> dict[int, _Section]:
    """The batch split by shard: each connection on its user's shard, each of its room
    memberships on the room's shard, each activity on the user's shard; the counters ride
    with the first section (the stats flush sums every shard's)."""
    sections: dict[int, _Section] = {}

    def section(shard: int) -> _Section:
        # Not setdefault(shard, _Section()): that builds a section per call, ~750 per batch.
        found = sections.get(shard)
        if found is None:
            found = sections[shard] = _Section()
        return found

    for i, c in enumerate(conns):
        section(user_home(c.uid)).conns.append(i)
        for room in c.rooms:
            section(room_home(room)).members.append((c.cid, c.uid, room))
    for uid, at in active.items():
        section(user_home(uid)).active.append((uid, at))
    if counters:
        section(next(iter(sections), 0)).counters = counters
    return sections


def _plan_section(
    shard: int, part: _Section, conns: Sequence[ConnRef], head: tuple[int, int, int]
) -> tuple[list[str], list[Any]]:
    k = keys(shard)
    ks = [*k.fixed(), k.active]
    args: list[Any] = [*head, len(part.counters)]
    for name, inc in part.counters.items():
        args += [name, inc]
    args.append(len(part.active))
    for uid, at in part.active:
        args += [uid, at]
    args.append(len(part.conns))
    for i in part.conns:
        c = conns[i]
        ks += [k.conn(c.cid), k.conn_rooms(c.cid), k.user(c.uid), k.user_conns(c.uid)]
        args.append(c.cid)
    args.append(len(part.members))
    for cid, uid, room in part.members:
        ks += [k.room(room), k.room_user(room, uid)]
        args += [cid, uid]
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
    """Refresh many connections (and add buffered counters): one round trip per node.

    The batch is cut into per-shard sections (the users' part on each user's shard, the
    rooms' memberships on each room's shard: heartbeat.lua), and every section of one node
    goes in one pipeline, the nodes at once (a Cluster client's pipeline groups by node).
    ``active``: uid -> Unix seconds of the users' latest ``activity`` frames, written in the
    same call (``last_active`` rides with the heartbeats, never a round trip of its own).

    WARNING: this is the hot path. One pipeline of EVALSHAs per node, no other Redis
    command, no SQL. Returns, per connection, :data:`HB_ALIVE`, :data:`HB_ENDED` or
    :data:`HB_LOST` (``HB_ALIVE == True``: callers that only ask "alive?" may compare with True).
    """
    now = now or now_ms()
    sections = _sections(conns, counters or {}, active or {})
    if not sections:
        return []
    lua = script("heartbeat")
    nodes = split_by_node(sorted(sections))
    head = (now, ttl_ms(), grace_ms())  # read once a batch, not once a section
    calls = [
        [(lua, *_plan_section(shard, sections[shard], conns, head)) for shard in part]
        for part in nodes
    ]
    answers = await asyncio.gather(
        *(
            arun_many(aclient_for(part[0]), node_calls)
            for part, node_calls in zip(nodes, calls, strict=True)
        )
    )
    result = [HB_LOST] * len(conns)
    for part, node_answers in zip(nodes, answers, strict=True):
        for shard, answer in zip(part, node_answers, strict=True):
            for i, code in zip(sections[shard].conns, answer, strict=True):
                result[i] = int(code)
    return result


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
    shard: int, conns: Sequence[ConnRef], mode: str, reason: str, now: int
) -> tuple[list[str], list[Any]]:
    k = keys(shard)
    ks = [*k.fixed(), k.events, k.held, k.held_why]
    grace = leave_grace_ms(reason) if mode == "closed" else 0
    args: list[Any] = [now, mode, reason, ttl_ms(), log_maxlen(), grace, len(conns)]
    for c in conns:
        ks += [k.conn(c.cid), k.conn_rooms(c.cid), k.user(c.uid), k.user_conns(c.uid)]
        args += [c.cid, c.uid]
    return ks, args


def _plan_end_rooms(
    shard: int, members: Sequence[tuple[str, int, str, str]], mode: str, reason: str, now: int
) -> tuple[list[str], list[Any]]:
    k = keys(shard)
    ks = [k.events, k.held, k.held_why]
    grace = leave_grace_ms(reason) if mode == "closed" else 0
    args: list[Any] = [now, reason, log_maxlen(), grace, len(members)]
    for cid, uid, room, username in members:
        ks += [k.room(room), k.room_user(room, uid)]
        args += [cid, uid, room, username]
    return ks, args


def _by_shard(conns: Sequence[ConnRef]) -> dict[int, list[int]]:
    by_shard: dict[int, list[int]] = {}
    for i, c in enumerate(conns):
        by_shard.setdefault(user_home(c.uid), []).append(i)
    return by_shard


def _user_halves(
    conns: Sequence[ConnRef], by_shard: dict[int, list[int]], mode: str, reason: str, now: int
) -> tuple[list[list[int]], list[list[ScriptCall]]]:
    lua = script("end")
    nodes = split_by_node(sorted(by_shard))
    calls: list[list[ScriptCall]] = [
        [
            (lua, *_plan_end(shard, [conns[i] for i in by_shard[shard]], mode, reason, now))
            for shard in part
        ]
        for part in nodes
    ]
    return nodes, calls


def _ended(
    conns: Sequence[ConnRef],
    by_shard: dict[int, list[int]],
    nodes: list[list[int]],
    answers: Sequence[Sequence[Any]],
) -> tuple[list[EndResult], list[list[str]], list[str]]:
    """end.lua's answers in the batch's order: the results, each connection's rooms (the
    caller's and its own set's), and the usernames."""
    results: list[EndResult] = [EndResult(c.cid, 0) for c in conns]
    rooms: list[list[str]] = [[] for _ in conns]
    names = [""] * len(conns)
    for part, node_answers in zip(nodes, answers, strict=True):
        for shard, answer in zip(part, node_answers, strict=True):
            for i, e in zip(by_shard[shard], answer, strict=True):
                results[i] = EndResult(
                    cid=str(e[0]), state=int(e[1]), global_left=int(e[2]) == 1, held=int(e[2]) == 2
                )
                names[i] = str(e[3])
                own = [str(room) for room in e[4:]]
                rooms[i] = list(dict.fromkeys([*conns[i].rooms, *own]))
    return results, rooms, names


def _room_halves(
    conns: Sequence[ConnRef],
    results: list[EndResult],
    rooms: list[list[str]],
    names: list[str],
    mode: str,
    reason: str,
    now: int,
) -> tuple[dict[int, list[tuple[int, str]]], list[list[int]], list[list[ScriptCall]]]:
    """end_rooms.lua calls for the connections ended now, one per room shard, by node."""
    members: dict[int, list[tuple[str, int, str, str]]] = {}
    owners: dict[int, list[tuple[int, str]]] = {}
    for i, c in enumerate(conns):
        if results[i].state != 1:
            continue
        for room in rooms[i]:
            shard = room_home(room)
            members.setdefault(shard, []).append((c.cid, c.uid, room, names[i]))
            owners.setdefault(shard, []).append((i, room))
    lua = script("end_rooms")
    nodes = split_by_node(sorted(members))
    calls: list[list[ScriptCall]] = [
        [(lua, *_plan_end_rooms(shard, members[shard], mode, reason, now)) for shard in part]
        for part in nodes
    ]
    return owners, nodes, calls


def _merge_rooms(
    results: list[EndResult],
    owners: dict[int, list[tuple[int, str]]],
    nodes: list[list[int]],
    answers: Sequence[Sequence[Any]],
) -> list[EndResult]:
    for part, node_answers in zip(nodes, answers, strict=True):
        for shard, answer in zip(part, node_answers, strict=True):
            for (i, room), code in zip(owners[shard], answer, strict=True):
                if int(code) == 1:
                    results[i].rooms_left.append(room)
                elif int(code) == 2 and not results[i].global_left:
                    results[i].held = True  # a room's leave is held: release_held is due
    return results


async def end_connections(
    conns: Sequence[ConnRef],
    *,
    reason: str = "closed",
    now: int | None = None,
    mode: str = "closed",
) -> list[EndResult]:
    """Remove connections whose socket closed; log their leaves and ``close`` (``reason``).

    Two steps: the user half (end.lua) on the users' shards, then the room half
    (end_rooms.lua) on the rooms' shards for the connections ended now; each step is one
    pipeline per node, the nodes at once. A process killed between them leaves room
    entries that lapse; the sweep's repair_rooms removes them and logs their leaves.

    ``mode="undo"``: a connect that did not finish; like a close, but a connection that was
    never registered logs nothing.
    """
    now = now or now_ms()
    by_shard = _by_shard(conns)
    if not by_shard:
        return []
    nodes, calls = _user_halves(conns, by_shard, mode, reason, now)
    answers = await asyncio.gather(
        *(arun_many(aclient_for(p[0]), c) for p, c in zip(nodes, calls, strict=True))
    )
    results, rooms, names = _ended(conns, by_shard, nodes, answers)
    owners, nodes, calls = _room_halves(conns, results, rooms, names, mode, reason, now)
    answers = await asyncio.gather(
        *(arun_many(aclient_for(p[0]), c) for p, c in zip(nodes, calls, strict=True))
    )
    return _merge_rooms(results, owners, nodes, answers)


def end_swept_connections(
    conns: Sequence[ConnRef], *, now: int | None = None, shard: int
) -> list[EndResult]:
    """Remove connections a sweep of ``shard`` claimed, unless they heartbeated since.

    The user half on ``shard`` (the connections' users' shard), then the room halves as in
    :func:`end_connections` (sync: the sweep runs in a Celery worker)."""
    now = now or now_ms()
    if not conns:
        return []
    by_shard = {shard: list(range(len(conns)))}
    nodes = [[shard]]
    answer = script("end").run(client_for(shard), *_plan_end(shard, conns, "swept", "timeout", now))
    results, rooms, names = _ended(conns, by_shard, nodes, [[answer]])
    owners, nodes, calls = _room_halves(conns, results, rooms, names, "swept", "timeout", now)
    answers = [run_many(client_for(p[0]), c) for p, c in zip(nodes, calls, strict=True)]
    return _merge_rooms(results, owners, nodes, answers)


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
    is logged (reassert.lua's header says why). The user half (reassert.lua) on the user's
    shard, then the room halves (room_join_room.lua, re-assert mode) on the rooms' shards,
    one pipeline per node.
    """
    now = now or now_ms()
    k, c = keys(user_home(live.conn.uid)), live.conn
    ks = [k.conns, k.users, k.stats, k.events]
    ks += [k.conn(c.cid), k.conn_rooms(c.cid), k.user(c.uid), k.user_conns(c.uid)]
    args: list[Any] = [now, ttl_ms(), grace_ms(), log_maxlen(), c.cid, c.uid]
    args += [live.username, live.channel, live.status, live.ip, live.login, len(c.rooms)]
    args += list(c.rooms)
    state, logged, *rest = await script("reassert").arun(aclient_for(k.shard), ks, args)
    if int(state) == 0 or not c.rooms:
        return int(state), int(logged)
    status = rest[0] if rest else live.status
    exp = now + ttl_ms()
    by_shard: dict[int, list[str]] = {}
    for room in c.rooms:
        by_shard.setdefault(room_home(room), []).append(room)
    lua, nodes = script("room_join_room"), split_by_node(sorted(by_shard))
    calls: list[list[ScriptCall]] = []
    for part in nodes:
        node_calls: list[ScriptCall] = []
        for shard in part:
            rk = keys(shard)
            for room in by_shard[shard]:
                rks = [rk.room(room), rk.room_user(room, c.uid), rk.rooms, rk.events]
                rargs = [now, grace_ms(), c.cid, c.uid, room, log_maxlen(), exp]
                rargs += [live.username, str(status or live.status), "1"]
                node_calls.append((lua, rks, rargs))
        calls.append(node_calls)
    answers = await asyncio.gather(
        *(arun_many(aclient_for(p[0]), nc) for p, nc in zip(nodes, calls, strict=True))
    )
    return int(state), int(logged) + sum(int(a) for node in answers for a in node)
