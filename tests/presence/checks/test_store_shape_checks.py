"""System checks of the presence store's shape: E032 (two shapes), E033 (bad shard URL),
E034 (no shards); and the topology they guard (presence/store/topology.py)."""

from __future__ import annotations

from pytest_django.fixtures import Settings

from presence import store
from presence.checks import check_presence_store_shape


class TestShapeChecks:
    def test_default_is_one_redis_and_passes(self) -> None:
        assert check_presence_store_shape() == []
        assert store.shape() == "single"

    def test_cluster_and_shard_urls_together_is_e032(self, settings: Settings) -> None:
        settings.PRESENCE_REDIS_CLUSTER_URL = "redis://127.0.0.1:7000"
        settings.PRESENCE_REDIS_SHARD_URLS = ["redis://127.0.0.1:7001"]
        errors = check_presence_store_shape()
        assert [e.id for e in errors] == ["presence.E032"]
        assert errors[0].hint

    def test_a_malformed_shard_url_is_e033(self, settings: Settings) -> None:
        settings.PRESENCE_REDIS_SHARD_URLS = ["redis://127.0.0.1:7001", "http://nope"]
        errors = check_presence_store_shape()
        assert [e.id for e in errors] == ["presence.E033"]
        assert "http://nope" in errors[0].msg

    def test_no_shards_is_e034(self, settings: Settings) -> None:
        settings.PRESENCE_SHARDS = 0
        assert [e.id for e in check_presence_store_shape()] == ["presence.E034"]

    def test_shard_urls_from_a_comma_separated_string(self, settings: Settings) -> None:
        settings.PRESENCE_REDIS_SHARD_URLS = "redis://a:1, redis://b:2,"
        from presence.conf import app_settings

        assert app_settings.REDIS_SHARD_URLS == ["redis://a:1", "redis://b:2"]
        assert store.shape() == "shards"


class TestSingleTopology:
    def test_every_shard_is_on_the_control_client(self) -> None:
        client = store.get_redis()
        assert {id(store.client_for(n)) for n in range(store.shard_count())} == {id(client)}
        [(only, shards)] = store.groups()
        assert only is client
        assert shards == list(range(64))
        assert store.node_count() == 1

    async def test_async_shards_share_this_loops_client(self) -> None:
        client = store.get_async_redis()
        assert store.aclient_for(5) is client
        assert store.aclient_for(5, blocking=True) is store.get_async_redis(blocking=True)
        [(only, shards)] = store.agroups()
        assert only is client and len(shards) == 64


class TestShardUrlTopology:
    def test_shards_map_onto_urls_by_jump_hash(self, settings: Settings) -> None:
        urls = ["redis://127.0.0.1:7101/0", "redis://127.0.0.1:7102/0", "redis://127.0.0.1:7103/0"]
        settings.PRESENCE_REDIS_SHARD_URLS = urls
        parts = store.split_by_node(list(range(64)))
        assert len(parts) == 3
        assert sorted(n for part in parts for n in part) == list(range(64))
        for part in parts:
            assert len({store.jump_hash(n, 3) for n in part}) == 1
            assert 14 <= len(part) <= 28  # roughly a third each
        # No connection is made until a command runs: clients per URL, one per node.
        clients = {id(store.client_for(n)) for n in range(64)}
        assert len(clients) == 3
        assert store.client_for(0).connection_pool.connection_kwargs["port"] == int(
            urls[store.jump_hash(0, 3)].split(":")[2].split("/")[0]
        )
