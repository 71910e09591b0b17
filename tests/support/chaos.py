"""The chaos suite's harness (``make chaos``, tests/chaos/): a real stack, a swarm, a table.

``Stack`` is what a deployment runs, as real processes on loopback: the presence store (a
Sentinel topology, tests/support/sentinel.py, or one plain redis-server), a separate broker
Redis for Celery (so the broker can fail on its own), two uvicorn web processes, a Celery
worker and beat, the test database, and a webhook receiver for the hooks. ``Swarm`` is N
WebSocket clients (one user each) spread over the two web processes, heartbeating every
``interval`` seconds and recording every ack's wait, every error frame and every close.

``run_scenario`` connects the swarm, applies one fault (closing a few clients while it
lasts, whose ends may be lost with the store), then measures what the issue asks for:
sockets closed, the longest ack wait, seconds until every connected user is listed again,
ghosts and missing users after TTL + sweep, hook events lost, duplicated or invented, and
whether worker and beat lived. ``render``/``write_report`` make the table of
docs/reliability.md. Every wait is bounded; every process is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.support.servers import ASGIServer
from tests.support.shard_swarm import (
    clients_by_url,
    connect_in_batches,
    open_client,
    store_online,
)
from tests.support.webhook_receiver import Receiver

# The clients' heartbeat interval and the TTL of the stack: short, so a scenario takes
# seconds; the TTL outlasts the 10 s pause plus detection (a paused store is no lapse).
HEARTBEAT_INTERVAL = 2.0
TTL = 15.0
SWEEP_INTERVAL = 1.0
CLOSED_DURING_FAULT = 10  # clients that close while the fault lasts


def stack_env(redis_url: str, broker_url: str, receiver: Receiver) -> dict[str, str]:
    """Environment of every process of the stack."""
    return {
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker_url,
        "PRESENCE_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
        "PRESENCE_TTL": str(TTL),
        "PRESENCE_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
        "PRESENCE_REDIS_SOCKET_TIMEOUT": "1",
        "PRESENCE_MAX_CONNECTIONS_PER_ADDRESS": "0",
        "PRESENCE_ADDRESS_CONNECT_RATE": "100000",
        "PRESENCE_ADDRESS_CONNECT_BURST": "100000",
        "PRESENCE_WEBHOOK_URL": receiver.url,
        # The receiver is on loopback, which webhooks refuse unless allowed (docs/hooks.md).
        "PRESENCE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "PRESENCE_WEBHOOK_SECRET": "chaos",
        "PRESENCE_WEBHOOK_EVENTS": "user.online,user.offline",
        "PRESENCE_HOOKS_INTERVAL": "0.5",
        "PRESENCE_WEBHOOK_BATCH_WINDOW": "0.2",
        "PRESENCE_WEBHOOK_RUN_BUDGET": "2",
        "PGAPPNAME": "presence-chaos",  # PostgreSQL: the sessions a scenario may terminate
        "http_proxy": "",
        "HTTP_PROXY": "",
        "no_proxy": "127.0.0.1,localhost",
    }


# --------------------------------------------------------------------------- the swarm
@dataclass
class Client:
    uid: int
    conn: ClientConnection | None = None
    sent: dict[int, float] = field(default_factory=dict)
    closed_code: int | None = None
    closing: bool = False  # closed by the test on purpose


@dataclass
class Tally:
    acks: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    longest_wait: float = 0.0

    def reset(self) -> None:
        self.acks, self.longest_wait = 0, 0.0
        self.errors.clear()
        self.closes.clear()


class Swarm:
    """N clients over the web processes, each heartbeating every ``interval`` seconds."""

    def __init__(self, servers: list[ASGIServer], tokens: list[tuple[int, str]]) -> None:
        self.servers, self.tokens = servers, tokens
        self.clients: list[Client] = []
        self.tally = Tally()
        self.total_acks = 0  # over the swarm's life (the flush check compares with it)
        self._tasks: list[asyncio.Task[None]] = []
        self._beaters: list[asyncio.Task[None]] = []

    async def connect(self, batch: int = 50) -> None:
        """Connect every client (``batch`` at a time), each past its hello."""
        await connect_in_batches(self.tokens, batch, self._connect)

    async def _connect(self, i: int, uid: int, token: str) -> None:
        conn = await open_client(self.servers[i % len(self.servers)], token)
        client = Client(uid, conn)
        self.clients.append(client)
        self._tasks.append(asyncio.create_task(self._run(client)))

    async def _run(self, client: Client) -> None:
        assert client.conn is not None
        beater = asyncio.create_task(self._beat(client))
        self._beaters.append(beater)
        try:
            async for raw in client.conn:
                frame = json.loads(raw)
                if frame.get("type") == "heartbeat.ack":
                    sent = client.sent.pop(frame["id"], None)
                    if sent is not None:
                        self.tally.acks += 1
                        self.total_acks += 1
                        wait = time.monotonic() - sent
                        self.tally.longest_wait = max(self.tally.longest_wait, wait)
                elif frame.get("type") == "error":
                    self.tally.errors[frame.get("code", "?")] += 1
                    client.sent.pop(frame.get("id"), None)
        except ConnectionClosed:
            pass
        finally:
            beater.cancel()
            if not client.closing:
                rcvd = client.conn.close_code
                client.closed_code = rcvd if rcvd is not None else 1006
                self.tally.closes[client.closed_code] += 1

    async def _beat(self, client: Client) -> None:
        assert client.conn is not None
        await asyncio.sleep(random.uniform(0, HEARTBEAT_INTERVAL))
        n = 0
        while True:
            n += 1
            # One outstanding heartbeat at a time, as the browser client does.
            if not client.sent:
                client.sent[n] = time.monotonic()
                with contextlib.suppress(ConnectionClosed):
                    await client.conn.send(json.dumps({"type": "heartbeat", "id": n}))
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def pending_longest(self) -> float:
        """The oldest heartbeat still unanswered (counts toward the longest wait)."""
        now = time.monotonic()
        waits = [
            now - t
            for c in self.clients
            if c.closed_code is None and not c.closing
            for t in c.sent.values()
        ]
        return max(waits, default=0.0)

    async def quiesce(self, within: float = 30) -> None:
        """Stop heartbeating and wait until every sent heartbeat was answered."""
        for beater in self._beaters:
            beater.cancel()
        deadline = time.monotonic() + within
        while any(c.sent for c in self.clients if c.closed_code is None and not c.closing):
            assert time.monotonic() < deadline, "heartbeats still unanswered"
            await asyncio.sleep(0.1)

    async def close_some(self, k: int) -> list[int]:
        """Close ``k`` clients on purpose (their users go offline); returns their user ids."""
        chosen = [c for c in self.clients if c.closed_code is None and not c.closing][:k]
        for c in chosen:
            c.closing = True
        await asyncio.gather(*(c.conn.close() for c in chosen if c.conn is not None))
        return [c.uid for c in chosen]

    def online(self) -> set[int]:
        """The users whose socket is open (not closed by either side)."""
        return {c.uid for c in self.clients if c.closed_code is None and not c.closing}

    async def stop(self) -> None:
        for c in self.clients:
            c.closing = True
        await asyncio.gather(
            *(c.conn.close() for c in self.clients if c.conn is not None),
            return_exceptions=True,
        )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --------------------------------------------------------------------------- outcome
@dataclass
class Outcome:
    """One scenario's row of the table."""

    scenario: str
    clients: int
    sockets_closed: int = 0
    error_frames: int = 0
    longest_ack_wait: float = 0.0
    relisted_after: float | None = None  # s after the fault until every online user listed
    ghosts: int = 0
    missing: int = 0
    events_lost: int = 0
    events_duplicated: int = 0
    invented_leaves: int = 0
    worker_alive: bool = True
    beat_alive: bool = True
    notes: str = ""

    def row(self) -> list[str]:
        relisted = "never" if self.relisted_after is None else f"{self.relisted_after:.1f}"
        return [
            self.scenario,
            str(self.clients),
            str(self.sockets_closed),
            str(self.error_frames),
            f"{self.longest_ack_wait:.1f}",
            relisted,
            str(self.ghosts),
            str(self.missing),
            f"{self.events_lost}/{self.events_duplicated}/{self.invented_leaves}",
            "yes" if self.worker_alive else "NO",
            "yes" if self.beat_alive else "NO",
            self.notes,
        ]


HEADER = [
    "scenario",
    "clients",
    "sockets closed",
    "error frames",
    "longest ack wait (s)",
    "all listed again after (s)",
    "ghosts",
    "missing",
    "hook events lost/dup/invented",
    "worker",
    "beat",
    "notes",
]


def render(outcomes: list[Outcome]) -> str:
    """The Markdown table of ``outcomes``."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(o.row()) + " |" for o in outcomes]
    return "\n".join(lines)


START, END = "<!-- chaos-table:start -->", "<!-- chaos-table:end -->"


def write_report(path: Path, outcomes: list[Outcome], command: str) -> None:
    """Put this run's rows into the table between the markers of ``path``; rows of other
    scenarios (from an earlier run, e.g. the PostgreSQL one) are kept with their run line."""
    text = path.read_text()
    head, _, rest = text.partition(START)
    old, _, tail = rest.partition(END)
    names = {o.scenario for o in outcomes}
    kept_rows = [
        line
        for line in old.splitlines()
        if line.startswith("| ")
        and not line.startswith("| scenario |")
        and line[2:].split(" | ")[0] not in names
    ]
    kept_names = {line[2:].split(" | ")[0] for line in kept_rows}
    kept_runs = [  # earlier runs that still have a row in the table
        line
        for line in old.splitlines()
        if line.startswith("- Run ") and any(name in line for name in kept_names)
    ]
    machine = f"{platform.node()}, {os.cpu_count()} cores, {platform.platform()}"
    run = (
        f"- Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine}: `{command}` "
        f"({', '.join(o.scenario for o in outcomes)})"
    )
    table = render(outcomes).splitlines()
    block = "\n".join(
        [START, *kept_runs[-3:], run, "", table[0], table[1], *kept_rows, *table[2:], END]
    )
    path.write_text(head + block + tail)


# --------------------------------------------------------------------------- measuring
def listed(client: redis.Redis) -> set[int]:
    """The users a store of one Redis lists online now (every shard's index, all on it)."""
    return store_online(lambda shard: client)


Lister = Callable[[], set[int]]


def single_lister(store_client: Callable[[], redis.Redis]) -> Lister:
    """The users listed online by a store of one Redis (every shard on it)."""
    return lambda: listed(store_client())


def shards_lister(primaries: Callable[[], list[redis.Redis]]) -> Lister:
    """The users listed online by every shard of a store of independent primaries
    (``primaries()``: one client per PRESENCE_REDIS_SHARD_URLS entry, its current primary):
    the union of the shards' ``users`` indexes."""

    def listing() -> set[int]:
        clients = primaries()
        try:
            return store_online(clients_by_url(clients))
        finally:
            for client in clients:
                client.close()

    return listing


async def wait_listed(lister: Lister, swarm: Swarm, within: float) -> float | None:
    """Seconds until every user with an open socket is listed, or None within ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        try:
            if swarm.online() <= await asyncio.to_thread(lister):
                return time.monotonic() - started
        except (redis.RedisError, OSError):
            pass
        await asyncio.sleep(0.2)
    return None


def hook_tallies(
    receiver: Receiver, closed: list[int], everyone: set[int]
) -> tuple[int, int, int, int]:
    """(lost, duplicated, invented, redelivered) ``user.offline`` events: closed users without
    one, users with more than one distinct event, events for users the test did not close
    (``everyone``: the swarm), and deliveries of an event id already delivered (the hooks
    are at least once: receivers deduplicate on the id, docs/hooks.md)."""
    events = [e for e in receiver.events() if e.get("type") == "user.offline"]
    ids: dict[int, set[str]] = {}
    for e in events:
        ids.setdefault(e["user"]["id"], set()).add(str(e.get("id")))
    lost = sum(1 for uid in closed if not ids.get(uid))
    duplicated = sum(1 for seen in ids.values() if len(seen) > 1)
    invented = sum(1 for uid in ids if uid not in closed and uid in everyone)
    redelivered = len(events) - sum(len(seen) for seen in ids.values())
    return lost, duplicated, invented, redelivered


def duplicate_sample(receiver: Receiver) -> str:
    """The distinct ``user.offline`` event ids (and times) of one user who got several."""
    by_user: dict[int, dict[str, Any]] = {}
    for e in receiver.events():
        if e.get("type") == "user.offline":
            by_user.setdefault(e["user"]["id"], {})[str(e.get("id"))] = e.get("at", e.get("time"))
    sample = next((ids for ids in by_user.values() if len(ids) > 1), {})
    return json.dumps(sample)


async def run_scenario(
    name: str,
    swarm: Swarm,
    fault: Callable[[], Any],
    *,
    store_client: Callable[[], redis.Redis] | None = None,
    lister: Lister | None = None,
    receiver: Receiver,
    alive: Callable[[], tuple[bool, bool]],
    notes: str = "",
    close_during: int = CLOSED_DURING_FAULT,
) -> Outcome:
    """Apply ``fault`` (a blocking callable, run in a thread) to a connected swarm; measure.
    Who is listed comes from ``lister``, or from ``store_client`` (a store of one Redis)."""
    if lister is None:
        assert store_client is not None, "a store_client or a lister"
        lister = single_lister(store_client)
    outcome = Outcome(name, len(swarm.clients), notes=notes)
    settled = await wait_listed(lister, swarm, 60)
    assert settled is not None, "the swarm was never listed in full before the fault"
    await asyncio.sleep(HEARTBEAT_INTERVAL)
    swarm.tally.reset()

    faulted = asyncio.create_task(asyncio.to_thread(fault))
    await asyncio.sleep(0.5)
    closed = await swarm.close_some(close_during)  # while the fault lasts
    await faulted
    outcome.relisted_after = await wait_listed(lister, swarm, 60)
    # TTL + sweep: connections whose end was lost with the store lapse and are swept.
    await asyncio.sleep(TTL + 4 * SWEEP_INTERVAL + 2)
    outcome.longest_ack_wait = max(swarm.tally.longest_wait, swarm.pending_longest())
    online = swarm.online()
    try:
        now_listed = await asyncio.to_thread(lister)
    except (redis.RedisError, OSError):
        now_listed = set()
    outcome.ghosts = len(now_listed - online)
    outcome.missing = len(online - now_listed)
    outcome.sockets_closed = sum(swarm.tally.closes.values())
    outcome.error_frames = sum(swarm.tally.errors.values())
    lost, dup, invented, again = hook_tallies(receiver, closed, {c.uid for c in swarm.clients})
    outcome.events_lost, outcome.events_duplicated, outcome.invented_leaves = lost, dup, invented
    if again:
        outcome.notes = f"{outcome.notes} {again} user.offline redelivered (same id)".strip()
    if dup:
        outcome.notes = f"{outcome.notes} duplicated, e.g.: {duplicate_sample(receiver)}".strip()
    outcome.worker_alive, outcome.beat_alive = alive()
    if swarm.tally.errors:
        outcome.notes = (outcome.notes + " errors: " + json.dumps(dict(swarm.tally.errors))).strip()
    if swarm.tally.closes:
        outcome.notes = (outcome.notes + " closes: " + json.dumps(dict(swarm.tally.closes))).strip()
    return outcome
