"""Real multi-node Redis shapes for the sharded presence store (plugin of tests/conftest.py).

Three topologies, each from the redis-server binary the suite already uses, on free loopback
ports under a temporary directory, every wait bounded and every process killed by ``stop()``:

- ``ClusterTopology``: a Redis Cluster of 3 primaries (``cluster-enabled yes``, joined by
  ``redis-cli --cluster create --cluster-replicas 0``): ``url`` (any node), ``reshard``,
  ``kill``, ``flushall``, ``stop``. Fixtures: ``redis_cluster`` (one cluster per test run,
  emptied before each test) and ``fresh_cluster`` (a cluster of the test's own, for tests that
  move slots or kill nodes).
- ``ShardsTopology``: 3 independent redis-servers (``PRESENCE_REDIS_SHARD_URLS``). Fixture
  ``redis_shards``: their URLs (one set per test run, emptied before each test).
- ``SentinelShards``: 3 shards, each a primary and a replica, watched by ONE set of three
  sentinels monitoring the 3 master names (the HA issue's topology, per shard): ``urls`` in the
  ``redis+sentinel://`` form and ``failover(shard)``. It reuses ``SentinelTopology`` per shard
  (its nodes, waits and failover) with the sentinels shared. Fixture ``sentinel_shards``.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.embedded_redis import RedisServer, free_port, redis_server_binary
from tests.support.sentinel import (
    WAIT,
    Address,
    Node,
    SentinelTopology,
    _wait_until,
    start_on_free_ports,
)

SLOTS = 16384
NODE_TIMEOUT_MS = 2000  # a silent node is marked failing after 2 s (the default is 15 s)


def redis_cli_binary() -> str:
    """The redis-cli beside the suite's redis-server (same version), else the one on PATH."""
    beside = Path(redis_server_binary()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise RuntimeError("redis-cli not found (beside redis-server or on PATH)")
    return found


_handed_out: set[int] = set()


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too. Picked at random below
    the kernel's ephemeral range (32768+, where the bus port would pass 65535), never one this
    process handed out already (nodes bind theirs only when started)."""
    for _ in range(1000):
        port = random.randrange(20000, 30000)
        if port in _handed_out or not (_bindable(port) and _bindable(port + 10000)):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _redis_cli(*args: str, timeout: float = 60.0) -> str:
    """Run ``redis-cli`` with ``args``; return its output, raise with it when it fails."""
    result = subprocess.run(
        [redis_cli_binary(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0 or "[ERR]" in result.stdout:
        raise RuntimeError(f"redis-cli {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


# -- Redis Cluster ----------------------------------------------------------------------------


class ClusterNode(Node):
    """One ``cluster-enabled`` redis-server (its nodes.conf under its own directory)."""

    def _args(self, replica_of: Address | None) -> list[str]:
        """A plain node's command line with the cluster on (``replica_of`` is not used)."""
        return [
            *super()._args(None),
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
        ]

    @staticmethod
    def _free_port() -> int:
        return free_cluster_port()  # its bus port (port + 10000) free too

    @property
    def node_id(self) -> str:
        """This node's cluster id (CLUSTER MYID)."""
        return str(self.client().execute_command("CLUSTER", "MYID"))

    def slots(self) -> set[int]:
        """The slots this node serves, as it reports them itself (CLUSTER SLOTS)."""
        owned: set[int] = set()
        for start, end, primary, *_ in self.client().execute_command("CLUSTER", "SLOTS"):
            if int(primary[1]) == self.port:
                owned.update(range(int(start), int(end) + 1))
        return owned


class ClusterTopology:
    """A Redis Cluster of 3 primaries, no replicas, on free loopback ports."""

    def __init__(self, directory: Path | None = None, size: int = 3) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="presence-cluster-"))
        self.nodes = [
            ClusterNode(f"cluster-{i}", self.directory / f"node-{i}", free_cluster_port())
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """A URL of one live node (a cluster client discovers the others from it)."""
        node = next(n for n in self.nodes if n.alive())
        return f"redis://127.0.0.1:{node.port}/0"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{n.port}/0" for n in self.nodes]

    def client(self, **kwargs: object) -> redis.RedisCluster:
        """A sync cluster client (decoded strings) that follows MOVED/ASK."""
        options: dict[str, object] = {"decode_responses": True, "socket_timeout": 5.0}
        options.update(kwargs)
        return redis.RedisCluster.from_url(self.url, **options)  # type: ignore[arg-type]

    def start(self) -> ClusterTopology:
        """Start the nodes, join them with ``redis-cli --cluster create``, wait until every
        node reports ``cluster_state:ok`` and sees all 16384 slots assigned."""
        try:
            # The suite's xdist workers each start a cluster at once: a port picked free may be
            # bound by another worker before our node binds it (seen in CI as a worker that
            # died in pytest_configure). The nodes then take new ports, three tries.
            start_on_free_ports(list(self.nodes), lambda: [node.start() for node in self.nodes])
            _redis_cli(
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                *("--cluster-replicas", "0", "--cluster-yes"),
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _ok(self) -> bool:
        for node in self.nodes:
            if not node.alive():
                continue
            info = node.client().execute_command("CLUSTER", "INFO")
            fields = dict(line.split(":", 1) for line in str(info).splitlines() if ":" in line)
            if fields.get("cluster_state") != "ok":
                return False
            if int(fields.get("cluster_slots_ok", 0)) != SLOTS:
                return False
            if int(fields.get("cluster_known_nodes", 0)) != len(self.nodes):
                return False
        return True

    def wait_ok(self, timeout: float = WAIT) -> None:
        """Wait until every live node says ``cluster_state:ok`` with all slots served."""
        _wait_until("cluster_state:ok on every node", self._ok, timeout)

    def slot_owner(self, slot: int) -> ClusterNode:
        """The node that serves ``slot`` (asked of the first live node)."""
        asking = next(n for n in self.nodes if n.alive())
        for start, end, primary, *_ in asking.client().execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(f"slot {slot} is not served")

    def reshard(self, source: int, target: int, slots: int, *, timeout: float = 120.0) -> None:
        """Move ``slots`` slots (keys included, by MIGRATE) from node index ``source`` to node
        index ``target`` with ``redis-cli --cluster reshard``; wait until the cluster is ok."""
        src, dst = self.nodes[source], self.nodes[target]
        _redis_cli(
            "--cluster",
            "reshard",
            f"127.0.0.1:{src.port}",
            *("--cluster-from", src.node_id, "--cluster-to", dst.node_id),
            *("--cluster-slots", str(slots), "--cluster-yes"),
            *("--cluster-pipeline", "100"),
            timeout=timeout,
        )
        self.wait_ok()

    def kill(self, node: int | ClusterNode) -> ClusterNode:
        """SIGKILL a node (an index or the node); its slots stay unserved (no replicas)."""
        target = self.nodes[node] if isinstance(node, int) else node
        target.kill()
        return target

    def flushall(self) -> None:
        """Empty every live node (a cluster's FLUSHALL only reaches the node it is sent to)."""
        for node in self.nodes:
            if node.alive():
                node.client().flushall()

    def stop(self) -> None:
        """Kill every process and remove the files; safe to call twice or after a failure."""
        for node in self.nodes:
            try:
                node.kill()
            except Exception:
                pass
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


# -- independent primaries --------------------------------------------------------------------


class ShardsTopology:
    """Independent redis-servers, one per presence shard URL (no cluster, no replication)."""

    def __init__(self, directory: Path | None = None, size: int = 3) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="presence-shards-"))
        self.servers = [RedisServer(self.directory / f"shard-{i}") for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self) -> ShardsTopology:
        """Start every server and wait until each answers PING."""
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def flushall(self) -> None:
        for server in self.servers:
            if not server.ping():
                server.start()
            redis.Redis.from_url(server.url).flushall()

    def stop(self) -> None:
        """Stop every server and remove the files; safe to call twice."""
        for server in self.servers:
            try:
                server.kill()
            except Exception:
                pass
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


# -- shards behind Sentinel -------------------------------------------------------------------


class SentinelShards:
    """``size`` shards, each a primary + replica, watched by one set of three sentinels that
    monitor all ``size`` master names (``presence-shard-<n>``).

    Each shard is a ``SentinelTopology`` whose ``sentinels`` list is the shared one, so its
    ``primary()``, ``replica()``, ``failover()``, ``kill_primary()`` and ``restart()`` work
    unchanged; only starting (one sentinel config with every master) is done here.
    """

    def __init__(self, directory: Path | None = None, size: int = 3) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="presence-sentinel-shards-"))
        self.sentinels = [
            Node(f"sentinel-{i}", self.directory / f"sentinel-{i}", free_port(), sentinel=True)
            for i in range(3)
        ]
        self.shards: list[SentinelTopology] = []
        for n in range(size):
            shard = SentinelTopology(self.directory / f"shard-{n}", f"presence-shard-{n}")
            shard.nodes = [
                Node(f"shard-{n}-redis-{i}", shard.directory / f"redis-{i}", free_port())
                for i in (0, 1)
            ]
            shard.sentinels = self.sentinels  # one sentinel set watches every shard
            self.shards.append(shard)

    @property
    def urls(self) -> list[str]:
        """One ``redis+sentinel://`` URL per shard (``PRESENCE_REDIS_SHARD_URLS``)."""
        return [shard.url for shard in self.shards]

    def start(self) -> SentinelShards:
        """Start every shard's primary and replica, then the sentinels; wait until each
        sentinel sees every shard's replica and the other sentinels."""
        try:
            # Each node's port was picked free before it starts: one lost to another process
            # in between is re-picked (start_on_free_ports), as SentinelTopology does.
            for shard in self.shards:
                primary, replica = shard.nodes
                start_on_free_ports([primary], primary.start)
                start_on_free_ports(
                    [replica], lambda p=primary, r=replica: r.start(replica_of=p.address)
                )
            for shard in self.shards:
                shard._wait_replica_synced(shard.nodes[1], shard.nodes[0])

            def start_sentinels() -> None:
                for sentinel in self.sentinels:
                    self._write_sentinel_conf(sentinel)
                    sentinel.start()

            # Each sentinel's config names its peers' ports: a lost port re-picks them all.
            start_on_free_ports(self.sentinels, start_sentinels)
            for shard in self.shards:
                _wait_until(
                    f"the sentinels to settle on {shard.master_name}", shard._sentinels_settled
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _write_sentinel_conf(self, sentinel: Node) -> None:
        # As SentinelTopology writes it, with one monitor block per shard's master name.
        from tests.support.sentinel import DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS

        sentinel.directory.mkdir(parents=True, exist_ok=True)
        first = self.shards[0]
        lines = [
            "bind 127.0.0.1",
            f"port {sentinel.port}",
            f"dir {sentinel.directory}",
            f"logfile {sentinel.log}",
            f"sentinel myid {first._myid(sentinel)}",
        ]
        for shard in self.shards:
            name = shard.master_name
            primary, replica = shard.nodes[0].address, shard.nodes[1].address
            lines += [
                f"sentinel monitor {name} {primary[0]} {primary[1]} 2",
                f"sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {name} 1",
                f"sentinel known-replica {name} {replica[0]} {replica[1]}",
                *(
                    f"sentinel known-sentinel {name} 127.0.0.1 {other.port} {first._myid(other)}"
                    for other in self.sentinels
                    if other is not sentinel
                ),
            ]
        (sentinel.directory / "sentinel.conf").write_text("\n".join([*lines, ""]))

    def failover(self, shard: int, *, wait_demoted: bool = True, timeout: float = WAIT) -> Address:
        """A planned failover of one shard (the others keep their primaries)."""
        return self.shards[shard].failover(wait_demoted=wait_demoted, timeout=timeout)

    def flushall(self) -> None:
        for shard in self.shards:
            shard.primary_client().flushall()

    def stop(self) -> None:
        """Kill every process and remove the files; safe to call twice or after a failure."""
        for shard in self.shards:
            shard.stop()  # its data nodes and (again, harmlessly) the shared sentinels
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


# -- the suite on a sharded store (``pytest --presence-store=cluster|shards``) -----------------

_store_shape: ClusterTopology | ShardsTopology | None = None


def start_store_shape(shape: str) -> None:
    """Start the store of ``shape`` and point the settings and subprocesses at it (the
    control keys, the channel layer and Celery stay on the suite's private Redis)."""
    global _store_shape
    from django.conf import settings

    if shape == "cluster":
        cluster = ClusterTopology().start()
        _store_shape = cluster
        os.environ["PRESENCE_REDIS_CLUSTER_URL"] = cluster.url
        settings.PRESENCE_REDIS_CLUSTER_URL = cluster.url
    elif shape == "shards":
        shards = ShardsTopology().start()
        _store_shape = shards
        os.environ["PRESENCE_REDIS_SHARD_URLS"] = ",".join(shards.urls)
        settings.PRESENCE_REDIS_SHARD_URLS = shards.urls


def stop_store_shape() -> None:
    """Stop what :func:`start_store_shape` started."""
    global _store_shape
    if _store_shape is not None:
        _store_shape.stop()
        _store_shape = None


@pytest.fixture(autouse=True)
def _clean_store_shape() -> None:
    """With ``--presence-store=cluster|shards``, every test starts with an empty store."""
    if _store_shape is not None:
        if isinstance(_store_shape, ClusterTopology):
            _store_shape.wait_ok()
        _store_shape.flushall()


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _cluster_session() -> Iterator[ClusterTopology]:
    topology = ClusterTopology().start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def redis_cluster(_cluster_session: ClusterTopology) -> ClusterTopology:
    """The run's 3-primary Redis Cluster, emptied for this test (do not move slots or kill
    nodes here: use ``fresh_cluster``)."""
    _cluster_session.wait_ok()
    _cluster_session.flushall()
    return _cluster_session


@pytest.fixture
def store_on_cluster(redis_cluster: ClusterTopology, settings: Any) -> Iterator[ClusterTopology]:
    """The presence store on the run's Cluster (``PRESENCE_REDIS_CLUSTER_URL``), with new
    clients before and after the test."""
    from presence import store

    settings.PRESENCE_REDIS_CLUSTER_URL = redis_cluster.url
    store.reset_clients()
    yield redis_cluster
    store.reset_clients()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ClusterTopology]:
    """A 3-primary Redis Cluster of this test's own (reshard it, kill nodes), killed after."""
    topology = ClusterTopology(tmp_path / "cluster")
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def _shards_session() -> Iterator[ShardsTopology]:
    topology = ShardsTopology().start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def shards_topology(_shards_session: ShardsTopology) -> ShardsTopology:
    """The run's 3 independent redis-servers, emptied for this test."""
    _shards_session.flushall()
    return _shards_session


@pytest.fixture
def redis_shards(shards_topology: ShardsTopology) -> list[str]:
    """The URLs of 3 independent, empty redis-servers (``PRESENCE_REDIS_SHARD_URLS``)."""
    return shards_topology.urls


@pytest.fixture
def sentinel_shards(tmp_path: Path) -> Iterator[SentinelShards]:
    """3 shards, each primary + replica, behind one set of three sentinels; killed after."""
    topology = SentinelShards(tmp_path / "sentinel-shards")
    try:
        yield topology.start()
    finally:
        topology.stop()
