"""The +switch-master watcher follows every shard URL in the Sentinel form, not only
REDIS_URL (presence/live/switchover.py): after a planned failover of the shard URL holding
two users' keys (each user's home shard), their new writes reach its new primary before the
old one is demoted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from presence import store
from presence.live import switchover
from tests.support.cluster import SentinelShards
from tests.support.ws import WSClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

WSFactory = Callable[..., Awaitable[WSClient]]
UserFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def on_sentinel_shards(sentinel_shards: SentinelShards, settings: Settings) -> Iterator[None]:
    settings.PRESENCE_REDIS_SHARD_URLS = sentinel_shards.urls
    settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 1.0
    store.reset_clients()
    yield
    store.reset_clients()


def test_every_sentinel_url_is_watched_once(sentinel_shards: SentinelShards, settings: Settings):
    settings.PRESENCE_REDIS_SHARD_URLS = [*sentinel_shards.urls, sentinel_shards.urls[0]]
    names = sorted(t.master_name for t in switchover._sentinel_targets())
    assert len(names) == 3 and len(set(names)) == 3


async def test_writes_follow_a_shards_new_primary_before_the_old_one_is_demoted(
    on_sentinel_shards: None,
    sentinel_shards: SentinelShards,
    ws_client: WSFactory,
    auser_factory: UserFactory,
) -> None:
    late_user = await auser_factory("late")
    home = store.user_home(late_user.pk)  # where the late connection's keys are written
    holder = store.topology.node_of(home)  # the shard URL holding that shard
    # A user of the same URL, connected before: its heartbeat uses the pooled connections.
    first_user = await auser_factory("first")
    while store.topology.node_of(store.user_home(first_user.pk)) != holder:
        first_user = await auser_factory()
    first = await ws_client(first_user)  # opens this loop's pools
    topology = sentinel_shards.shards[holder]
    old = topology.primary()

    new_address = await asyncio.to_thread(sentinel_shards.failover, holder, wait_demoted=False)
    await asyncio.sleep(0.5)  # the watcher hears +switch-master and drops the pools
    assert old.role() == "master"  # not demoted yet: it would still take writes
    late = await ws_client(late_user)
    assert await first.request("heartbeat", id_="hb") == {"type": "heartbeat.ack", "id": "hb"}

    key = store.keys(home).conn(late.hello["session_id"])
    assert topology.node_at(new_address).client().hexists(key, "uid")
    assert not old.client().hexists(key, "uid")
