"""Where each logical shard lives: one Redis, a Redis Cluster, or independent primaries.

Three shapes of the presence store, one code path (docs/operations.md, Sharding):

* ``single`` (default; ``make run``): every shard on REDIS_URL, the control keys' server.
* ``cluster`` (PRESENCE_REDIS_CLUSTER_URL): one ``RedisCluster`` client (sync, and asyncio
  per event loop); it routes each command and pipeline entry by slot and follows MOVED/ASK
  while slots migrate. A shard's tag puts its keys in one slot (presence/store/shards.py).
* ``shards`` (PRESENCE_REDIS_SHARD_URLS): logical shard n lives on URL ``jump_hash(n, len)``;
  each URL may be a ``redis+sentinel://`` URL and then follows failover like REDIS_URL.

Store functions pick clients here; callers never choose a client for presence state.
:func:`groups` answers "which client holds which shards" for reads and writes that fan out:
one entry per node for ``single``/``shards`` (several shards' commands go in one pipeline,
or one script call, per node), one entry with every shard for ``cluster`` (whose pipelines
split by slot themselves).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, cast

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster

from presence.conf import app_settings
from presence.loops import LoopLocal
from presence.store.clients import (
    async_client_for,
    client_options,
    get_async_redis,
    get_redis,
    on_reset,
    sync_client_for,
)
from presence.store.shards import all_shards, jump_hash, shard_count

Shape = Literal["single", "cluster", "shards"]


def shape() -> Shape:
    """The configured shape of the presence store (checks.py refuses both URLs set)."""
    if app_settings.REDIS_CLUSTER_URL:
        return "cluster"
    if app_settings.REDIS_SHARD_URLS:
        return "shards"
    return "single"


@lru_cache(maxsize=65536)
def _url_index(shard: int, urls: int) -> int:
    return jump_hash(shard, urls)


def node_of(shard: int) -> int:
    """Index of the node holding ``shard``: into PRESENCE_REDIS_SHARD_URLS for ``shards``,
    0 otherwise (one Redis; a Cluster routes by slot itself)."""
    urls = app_settings.REDIS_SHARD_URLS
    return _url_index(shard, len(urls)) if urls else 0


# --------------------------------------------------------------------------- Cluster clients
_sync_cluster: dict[str, RedisCluster] = {}
_async_cluster: LoopLocal[dict[str, AsyncRedisCluster]] = LoopLocal(lambda loop: {})


def _cluster_options(*, for_asyncio: bool) -> dict[str, Any]:
    options = client_options(for_asyncio=for_asyncio)
    # The cluster client's own retry (redis-py's default) re-routes after MOVED/ASK and
    # retries connection errors while a node restarts; one retry (client_options) is too few
    # while slots migrate.
    options.pop("retry")
    return options


# WARNING: redis-py drops a node from the client's startup nodes at every connection error
# or timeout on it (redis/redis-py#3693), and then closes every node's connections, which
# fails the commands in flight on the other nodes, which drop theirs: one closed connection
# under load can leave the client with no node to ask, and every command then fails ("Please
# provide at least one reachable node: None") until the process restarts. Seen in
# tests/e2e/test_shard_reshard.py under a busy machine: 2,000 handler errors in a row. The two
# classes below put the nodes they know back before the client looks for the cluster again.


def _known_nodes(
    seeds: list[tuple[str, int]], nodes_cache: dict[str, Any]
) -> list[tuple[str, int]]:
    """The configured node(s), then every node the client has seen, each once."""
    known = dict.fromkeys([*seeds, *((node.host, node.port) for node in nodes_cache.values())])
    return list(known)


class _Cluster(RedisCluster):
    """redis-py's cluster client that cannot run out of startup nodes (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        nodes = self.nodes_manager.startup_nodes.values()
        self._seeds: list[tuple[str, Any]] = [(n.host, n.port) for n in nodes]

    def _reseed(self) -> None:
        manager = self.nodes_manager
        if not manager.startup_nodes:
            for host, port in _known_nodes(self._seeds, manager.nodes_cache):
                node = ClusterNode(host, port)
                manager.startup_nodes[node.name] = node

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self._reseed()
        return super().execute_command(*args, **kwargs)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self._reseed()
        return super().pipeline(*args, **kwargs)


class _AsyncCluster(AsyncRedisCluster):
    """redis-py's asyncio cluster client that cannot run out of startup nodes (see above).
    Commands and pipelines both pass through :meth:`initialize` once the client was closed
    by an error, which is where it looks for the cluster again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        nodes = self.nodes_manager.startup_nodes.values()
        self._seeds: list[tuple[str, Any]] = [(n.host, n.port) for n in nodes]

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # WARNING: redis-py 7.4 chooses a command's routing before it initializes the client:
        # with no default node yet, a keyed command (EVALSHA) is routed as keyless, to a
        # random node. The first commands of a new client then met MOVED, and several at once
        # (16 connects in flight) made it close and rebuild its nodes under the commands in
        # flight, which failed ("Connection closed by server"). Initialized first, it routes
        # by slot from the start.
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def initialize(self) -> AsyncRedisCluster:
        manager = self.nodes_manager
        if self._initialize and not manager.startup_nodes:
            for host, port in _known_nodes(self._seeds, manager.nodes_cache):
                node = AsyncClusterNode(host, port, **manager.connection_kwargs)
                manager.startup_nodes[node.name] = node
        return await super().initialize()


def _sync_cluster_client(url: str) -> RedisCluster:
    client = _sync_cluster.get(url)
    if client is None:
        client = _sync_cluster[url] = _Cluster.from_url(url, **_cluster_options(for_asyncio=False))
    return client


def _async_cluster_client(url: str, *, blocking: bool) -> AsyncRedisCluster:
    per_loop = _async_cluster.get()
    key = url + "#blocking" if blocking else url
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = _AsyncCluster.from_url(url, **_cluster_options(for_asyncio=True))
    return client


def _forget_cluster_clients() -> None:
    for client in _sync_cluster.values():
        client.close()
    _sync_cluster.clear()
    _async_cluster.clear()


on_reset(_forget_cluster_clients)


# --------------------------------------------------------------------------- per shard
def client_for(shard: int) -> redis.Redis:
    """The sync client holding ``shard`` (a ``RedisCluster`` speaks the same commands)."""
    if cluster_url := app_settings.REDIS_CLUSTER_URL:
        return cast(redis.Redis, _sync_cluster_client(cluster_url))
    if urls := app_settings.REDIS_SHARD_URLS:
        return sync_client_for(urls[node_of(shard)])
    return get_redis()


def aclient_for(shard: int, *, blocking: bool = False) -> aredis.Redis:
    """This event loop's async client holding ``shard`` (``blocking``: the separate client of
    blocking reads, as get_async_redis)."""
    if cluster_url := app_settings.REDIS_CLUSTER_URL:
        return cast(aredis.Redis, _async_cluster_client(cluster_url, blocking=blocking))
    if urls := app_settings.REDIS_SHARD_URLS:
        return async_client_for(urls[node_of(shard)], blocking=blocking)
    return get_async_redis(blocking=blocking)


def split_by_node(shards: list[int]) -> list[list[int]]:
    """``shards`` split into one list per node holding some (in order; one list on a Cluster
    or one Redis). Writers batch per node: one round trip per node, not per shard."""
    if shape() != "shards":
        return [shards] if shards else []
    by_node: dict[int, list[int]] = {}
    for shard in shards:
        by_node.setdefault(node_of(shard), []).append(shard)
    return [by_node[node] for node in sorted(by_node)]


def groups() -> list[tuple[redis.Redis, list[int]]]:
    """Every shard, grouped by the sync client holding it: [(client, [shards])]."""
    return [(client_for(part[0]), part) for part in split_by_node(list(all_shards()))]


def agroups(*, blocking: bool = False) -> list[tuple[aredis.Redis, list[int]]]:
    """Every shard, grouped by this loop's async client holding it: [(client, [shards])]."""
    return [
        (aclient_for(part[0], blocking=blocking), part)
        for part in split_by_node(list(all_shards()))
    ]


def node_count() -> int:
    """How many groups :func:`groups` returns (nodes a fan-out talks to)."""
    return len(split_by_node(list(range(shard_count()))))
