"""The chaos suite (``make chaos``; marker ``chaos``, left out of ``make test``).

One scenario per test, each on a fresh stack of real processes (tests/support/chaos.py):
the presence store as a Sentinel topology (primary, replica, three sentinels; ``REDIS_URL``
in its ``redis+sentinel://`` form) or one plain redis-server, a broker Redis of its own, two
uvicorn web processes, a Celery worker and beat, the test database, a webhook receiver, and
``CHAOS_CLIENTS`` WebSocket clients (default 300) heartbeating every 2 s. Each test records
its row of the table in docs/reliability.md (written when the module ends) and asserts the
acceptance goals that apply to it. Bounded: about a minute per scenario on the project
machine, every process stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from config.embedded_redis import RedisServer
from presence.access.auth import mint_token
from tests.support.celery import CeleryProcess
from tests.support.chaos import (
    CLOSED_DURING_FAULT,
    Lister,
    Outcome,
    Swarm,
    render,
    run_scenario,
    shards_lister,
    stack_env,
    write_report,
)
from tests.support.cluster import SentinelShards
from tests.support.consume import ConsumeProcess
from tests.support.paths import ROOT
from tests.support.sentinel import SentinelTopology
from tests.support.servers import ASGIServer, ASGIServerFactory
from tests.support.webhook_receiver import Receiver

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(420),
]

CLIENTS = int(os.environ.get("CHAOS_CLIENTS", "300"))
RESULTS: list[Outcome] = []
REPORT = ROOT / "docs" / "reliability.md"


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    """Print the table when the module ends, and write it into docs/reliability.md."""
    yield
    if not RESULTS:
        return
    print("\n" + render(RESULTS))
    if os.environ.get("CHAOS_WRITE_REPORT", "1") == "1":
        from django.db import connection

        command = "make chaos CHAOS_CLIENTS=" + str(CLIENTS)
        if connection.vendor == "postgresql":
            command = "DATABASE_URL=postgres://postgres@127.0.0.1:5432/test " + command
        write_report(REPORT, RESULTS, command)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """Celery's own Redis, apart from the presence store, so it can fail on its own."""
    server = RedisServer(tmp_path / "broker").start()
    yield server
    server.stop()


@pytest.fixture
def plain_store(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "store").start()
    yield server
    server.stop()


class Stack:
    """The web processes, worker and beat of one scenario, on ``redis_url``."""

    def __init__(
        self,
        tmp_path: Path,
        celery: Callable[..., CeleryProcess],
        consume: Callable[..., ConsumeProcess],
        receiver: Receiver,
        broker: RedisServer,
    ) -> None:
        self.factory = ASGIServerFactory(tmp_path)
        self.celery, self.receiver, self.broker = celery, receiver, broker
        self.consume = consume
        self.servers: list[ASGIServer] = []
        self.worker: CeleryProcess | None = None
        self.beat: CeleryProcess | None = None

    def start(self, redis_url: str, extra: dict[str, str] | None = None) -> list[ASGIServer]:
        env = {**stack_env(redis_url, self.broker.url, self.receiver), **(extra or {})}
        self.worker = self.celery(env=env, concurrency=1)
        self.beat = self.celery(env=env, beat=True)
        # The event log's readers (session rows, signals, webhooks): without them no hook
        # is delivered and every user.offline of the scenario counts as lost.
        self.consume(env=env)
        self.servers = [self.factory(env=env) for _ in range(2)]
        return self.servers

    def alive(self) -> tuple[bool, bool]:
        assert self.worker is not None and self.beat is not None
        return self.worker.proc.poll() is None, self.beat.proc.poll() is None

    def stop(self) -> None:
        self.factory.stop_all()


@pytest.fixture
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    celery_worker_process: Callable[..., CeleryProcess],
    consume_process: Callable[..., ConsumeProcess],
    receiver: Receiver,
    broker: RedisServer,
) -> Iterator[Stack]:
    """The scenario's processes; their logs are kept in var/chaos/<test>/ for a post-mortem."""
    logs = ROOT / "var" / "chaos" / request.node.name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    s = Stack(logs, celery_worker_process, consume_process, receiver, broker)
    yield s
    s.stop()
    for log in [*tmp_path.glob("celery-*.log"), *tmp_path.glob("consume-*.log")]:
        shutil.copy(log, logs / log.name)


def _tokens(n: int) -> list[tuple[int, str]]:
    user_model = get_user_model()
    stamp = int(time.time())
    users = user_model.objects.bulk_create(
        [user_model(username=f"chaos-{stamp}-{i}", password="!") for i in range(n)]
    )
    return [(u.pk, mint_token(u)) for u in users]


async def swarm_on(servers: list[ASGIServer]) -> Swarm:
    swarm = Swarm(servers, await sync_to_async(_tokens)(CLIENTS))
    await swarm.connect()
    return swarm


async def scenario(
    name: str,
    stack: Stack,
    redis_url: str,
    fault: Callable[[], Any],
    store_client: Callable[[], Any] | None,
    notes: str = "",
    *,
    close_during: int = CLOSED_DURING_FAULT,
    after: Callable[[Swarm, Outcome], Awaitable[None]] | None = None,
    env: dict[str, str] | None = None,
    lister: Lister | None = None,
) -> Outcome:
    swarm = await swarm_on(stack.start(redis_url, env))
    try:
        outcome = await run_scenario(
            name,
            swarm,
            fault,
            store_client=store_client,
            lister=lister,
            receiver=stack.receiver,
            alive=stack.alive,
            notes=notes,
            close_during=close_during,
        )
        if after is not None:
            await after(swarm, outcome)
    finally:
        await swarm.stop()
    RESULTS.append(outcome)
    print(render([outcome]), file=sys.stderr)
    return outcome


def assert_no_socket_cost(outcome: Outcome) -> None:
    """The failover goals: no socket closed, no error frame, everyone listed, no ghost."""
    assert outcome.sockets_closed == 0, outcome
    assert outcome.error_frames == 0, outcome
    assert outcome.relisted_after is not None, outcome
    assert outcome.ghosts == 0 and outcome.missing == 0, outcome
    assert outcome.invented_leaves == 0, outcome
    assert outcome.worker_alive and outcome.beat_alive, outcome


class TestSentinel:
    async def test_planned_failover(
        self, stack: Stack, sentinel_topology: SentinelTopology
    ) -> None:
        t = sentinel_topology
        outcome = await scenario(
            "SENTINEL FAILOVER (planned)", stack, t.url, t.failover, t.primary_client
        )
        assert_no_socket_cost(outcome)
        # Within one heartbeat interval of the old primary's demotion (the fault's end).
        assert outcome.relisted_after is not None and outcome.relisted_after <= 2.0 + 1, outcome

    async def test_primary_killed(self, stack: Stack, sentinel_topology: SentinelTopology) -> None:
        t = sentinel_topology
        outcome = await scenario(
            "kill -9 of the primary", stack, t.url, t.kill_primary, t.primary_client
        )
        assert_no_socket_cost(outcome)
        assert outcome.relisted_after is not None and outcome.relisted_after <= 2.0 + 1, outcome

    async def test_primary_paused_10s(
        self, stack: Stack, sentinel_topology: SentinelTopology
    ) -> None:
        t = sentinel_topology
        outcome = await scenario(
            "primary paused 10 s (SIGSTOP)",
            stack,
            t.url,
            lambda: t.pause_primary(10),
            t.primary_client,
            notes="Sentinel fails over during the pause",
        )
        assert_no_socket_cost(outcome)


class TestSingleRedis:
    async def test_store_restarted_empty(self, stack: Stack, plain_store: RedisServer) -> None:
        def restart_empty() -> None:
            plain_store.kill()
            time.sleep(3)
            plain_store.start()

        outcome = await scenario(
            "store restarted empty, no replica",
            stack,
            plain_store.url,
            restart_empty,
            lambda: plain_store_client(plain_store),
            notes="closes during the outage reach no store",
        )
        # The sockets stay and re-assert themselves; nothing is left listed that is gone.
        assert outcome.sockets_closed == 0 and outcome.error_frames == 0, outcome
        assert outcome.relisted_after is not None, outcome
        assert outcome.ghosts == 0 and outcome.missing == 0, outcome
        assert outcome.invented_leaves == 0, outcome
        assert outcome.worker_alive and outcome.beat_alive, outcome

    async def test_broker_killed_and_restarted(
        self, stack: Stack, plain_store: RedisServer, broker: RedisServer
    ) -> None:
        def broker_down() -> None:
            broker.kill()
            time.sleep(5)
            broker.start()

        outcome = await scenario(
            "broker Redis killed, restarted after 5 s",
            stack,
            plain_store.url,
            broker_down,
            lambda: plain_store_client(plain_store),
        )
        assert_no_socket_cost(outcome)
        assert outcome.events_lost == 0, outcome


class TestSentinelShards:
    """The presence store as 3 shards (PRESENCE_REDIS_SHARD_URLS), each a primary and a
    replica behind one set of three sentinels (``redis+sentinel://`` URLs); REDIS_URL (the
    channel layer, control keys) a plain redis-server of its own."""

    async def test_failover_of_one_shard_and_kill_of_another(
        self, stack: Stack, sentinel_shards: SentinelShards, plain_store: RedisServer
    ) -> None:
        t = sentinel_shards

        def faults() -> None:
            # A planned failover of shard 0, then an unplanned one of shard 1 (kill -9 of
            # its primary, wait until its replica is promoted); shard 2 keeps its primary.
            t.failover(0)
            t.shards[1].kill_primary()

        def primaries() -> list[Any]:
            return [s.primary_client(decode_responses=True, socket_timeout=2) for s in t.shards]

        outcome = await scenario(
            "3 Sentinel shards: failover of shard 0, kill -9 of shard 1's primary",
            stack,
            plain_store.url,
            faults,
            None,
            notes="PRESENCE_REDIS_SHARD_URLS of 3 redis+sentinel:// URLs",
            env={"PRESENCE_REDIS_SHARD_URLS": ",".join(t.urls)},
            lister=shards_lister(primaries),
        )
        assert_no_socket_cost(outcome)


def plain_store_client(server: RedisServer) -> Any:
    import redis

    return redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=2)


# --------------------------------------------------------------------------- PostgreSQL
# The stack's processes connect with PGAPPNAME=presence-chaos (libpq reads it); the test's
# own connections are left alone.
TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'presence-chaos'
"""


def terminate_backends_for(seconds: float, ended: list[int]) -> None:
    """Every 0.2 s for ``seconds``, end every session of the stack on the test database: what
    a restart does to the web processes' and the worker's connections (the machine's server
    itself cannot be restarted by a test)."""
    from django.db import connection

    deadline = time.monotonic() + seconds
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(TERMINATE)
            ended.append(int(cursor.fetchone()[0]))
            time.sleep(0.2)


def _flushed_totals(client: Any) -> tuple[int, int]:
    """(heartbeats in StatsBucket rows, heartbeats still waiting in Redis)."""
    from django.db.models import Sum

    from presence import store
    from presence.models import StatsBucket

    waiting = 0
    for shard in store.all_shards():  # every shard's counters, all on the one Redis
        k = store.keys(shard)
        waiting += int(client.hget(k.stats, "heartbeats") or 0)
        # The claims index is a ZSET (flush id -> claim ms: list_stats_claims reads it).
        for flush_id in client.zrange(k.stats_claims, 0, -1):
            waiting += int(client.hget(k.stats_claim(flush_id), "heartbeats") or 0)
    db = StatsBucket.objects.aggregate(n=Sum("heartbeats"))["n"] or 0
    return int(db), waiting


class TestPostgreSQL:
    async def test_backends_terminated_during_flushes(
        self, stack: Stack, plain_store: RedisServer
    ) -> None:
        from django.db import connection

        if connection.vendor != "postgresql":
            pytest.skip("needs DATABASE_URL=postgres://... (the flush's transactions)")

        ended: list[int] = []

        async def flush_exact(swarm: Swarm, outcome: Outcome) -> None:
            await swarm.quiesce()
            client = plain_store_client(plain_store)
            deadline = time.monotonic() + 60
            while True:
                db, waiting = await sync_to_async(_flushed_totals)(client)
                if waiting == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            exact = db == swarm.total_acks and waiting == 0
            outcome.notes = (
                f"{sum(ended)} sessions terminated; flush totals "
                f"{'exact' if exact else 'NOT exact'}: {db} heartbeats in the database, "
                f"{swarm.total_acks} acked, {waiting} still in Redis"
            )
            assert sum(ended) > 0, "no session of the stack was terminated"
            assert exact, outcome.notes

        outcome = await scenario(
            "PostgreSQL backends terminated during flushes (6 s)",
            stack,
            plain_store.url,
            lambda: terminate_backends_for(6, ended),
            lambda: plain_store_client(plain_store),
            close_during=0,
            after=flush_exact,
            env={"STATS_FLUSH_INTERVAL": "1"},
        )
        assert_no_socket_cost(outcome)
