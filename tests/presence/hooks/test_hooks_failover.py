"""One close, one ``user.offline`` across a failover (presence/hooks/replicas.py).

A real Sentinel topology (tests/support/sentinel.py) holds the store, ``REDIS_URL`` in its
Sentinel form. A socket closes inside a planned failover's window: the replica is promoted,
the old primary still takes the writes of the store's pooled connections, and the close
lands there; the demotion drops it and the new primary's sweep ends the connection again.
Before the hooks waited for a replica, the close's ``user.offline`` was sent from the old
primary and the sweep's second one followed (the chaos suite's 10/10 duplicates).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from pytest_django.fixtures import Settings

from presence import signals, store
from presence.conf import app_settings
from presence.hooks import dispatch, replicas, webhooks
from presence.hooks.events import HookEvent
from presence.jobs.sweep import run_sweep
from presence.models import WebhookEndpoint, WebhookEvent
from presence.store.groups import entry_id
from tests.support.sentinel import Node, SentinelTopology

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180),
    pytest.mark.single_only(
        reason="fails over the one Redis behind REDIS_URL's Sentinel, which holds the store "
        "only on one Redis (shards behind Sentinel: the chaos suite's shard scenario)"
    ),
]

UID = 7


@pytest.fixture
def on_sentinel(sentinel_topology: SentinelTopology, settings: Settings) -> Iterator[None]:
    settings.REDIS_URL = sentinel_topology.url
    settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 1.0
    settings.PRESENCE_LEAVE_GRACE = 0  # the close's leave is logged at once
    store.reset_clients()
    yield
    store.reset_clients()


@pytest.fixture
def offline() -> Iterator[list[HookEvent]]:
    """Every ``user.offline`` signal sent."""
    seen: list[HookEvent] = []

    def receive(sender: str, event: HookEvent, **kwargs: Any) -> None:
        seen.append(event)

    signals.user_offline.connect(receive, weak=False)
    yield seen
    signals.user_offline.disconnect(receive)


@pytest.fixture
def endpoint() -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        name="receiver", url="http://127.0.0.1:9/hooks", secret="s", enabled=True
    )


def wait_demoted(node: Node, timeout: float = 30.0) -> None:
    """Until ``node`` (the old primary) replicates from the new one, in sync."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = node.client().info("replication")
        if info["role"] == "slave" and info.get("master_link_status") == "up":
            return
        time.sleep(0.1)
    raise TimeoutError(f"{node.name} was not demoted within {timeout} s")


def _webhook_offline(endpoint: WebhookEndpoint) -> list[str]:
    rows = WebhookEvent.objects.filter(endpoint=endpoint, type="user.offline")
    return list(rows.values_list("event_id", flat=True))


async def test_a_close_lost_with_its_primary_gives_one_offline(
    on_sentinel: None,
    sentinel_topology: SentinelTopology,
    offline: list[HookEvent],
    endpoint: WebhookEndpoint,
) -> None:
    topology = sentinel_topology
    ttl = int(app_settings.TTL * 1000)
    # Lapsed already (its last heartbeat a TTL ago): the sweep ends it once it runs.
    started = store.now_ms() - ttl - 1000
    ref = store.ConnRef("c1", UID)
    await store.connect(cid="c1", uid=UID, username="u", channel="ch", now=started)
    online = await sync_to_async(dispatch.send_signals)()
    await sync_to_async(webhooks.route)(webhooks.RouteReport())
    assert online.events == 1 and offline == []
    old = topology.primary()
    assert old.client().execute_command("WAIT", 1, 5000) == 1  # all on the replica

    # A planned failover: the replica is promoted; the old primary keeps taking the writes of
    # connections opened before (the store's pooled ones) until the sentinels demote it.
    topology.failover(wait_demoted=False)
    [result] = await store.end_connections([ref])
    assert result.state == 1
    assert old.role() == "master", "demoted already: the close did not land in the window"
    home = store.user_home(UID)  # the connection, its close and its leave: the user's shard
    assert old.client().hgetall(store.keys(home).conn("c1")).keys() == {"ended"}
    held = await sync_to_async(dispatch.send_signals)()
    routed = await sync_to_async(webhooks.route)(webhooks.RouteReport())
    # The close's user.offline waits: no replica holds it, and the sentinels name another
    # primary.
    assert offline == [] and held.unreplicated >= 1 and routed.unreplicated >= 1
    assert await sync_to_async(_webhook_offline)(endpoint) == []
    # A reader's newer pooled connection reaches the new primary, which never had the
    # close's entries: they are looked up where the WAIT runs, so still not confirmed.
    raw = old.client().xrange(store.keys(home).events, "-", "+")[-2:]
    closes = [store.GroupEntry(entry_id(home, i), fields) for i, fields in raw]
    assert [e.fields["k"] for e in closes] == ["leave", "close"]
    store.reset_clients()
    ready, waiting = await sync_to_async(replicas.split_replicated)(closes)
    assert ready == [] and waiting == closes

    # The demotion drops the close; the new primary's sweep ends the connection again.
    wait_demoted(old)
    store.reset_clients()
    swept = await sync_to_async(run_sweep)()
    assert swept.ended == 1  # the new primary still had the connection
    await sync_to_async(dispatch.send_signals)()
    await sync_to_async(webhooks.route)(webhooks.RouteReport())

    assert [(e.user_id, e.reason) for e in offline] == [(UID, "expired")]
    assert len(await sync_to_async(_webhook_offline)(endpoint)) == 1


async def test_a_primary_left_without_replica_is_not_held(
    on_sentinel: None, sentinel_topology: SentinelTopology, offline: list[HookEvent]
) -> None:
    # kill -9 of the primary, not restarted: the promoted replica runs alone. The sentinels
    # still name it and know no replica in service, so its events go at once.
    await store.connect(cid="c1", uid=UID, username="u", channel="ch")
    old = sentinel_topology.kill_primary()
    store.reset_clients()
    await store.connect(cid="c2", uid=UID + 1, username="v", channel="ch")
    await store.end_connections([store.ConnRef("c2", UID + 1)])
    assert sentinel_topology.primary() is not old

    # Until the sentinels mark the killed node down (down-after: 1 s here) it counts as a
    # replica in service that does not ack; after that the events go, long before HOLD_MAX.
    started = time.monotonic()
    while not offline and time.monotonic() - started < replicas.HOLD_MAX / 2:
        await sync_to_async(dispatch.send_signals)()
    waited = time.monotonic() - started
    assert [(e.user_id, e.reason) for e in offline] == [(UID + 1, "closed")]
    assert waited < replicas.HOLD_MAX / 2
