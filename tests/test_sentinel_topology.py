"""The Sentinel topology fixture itself: failovers really move the primary (tests/support)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from tests.support.sentinel import SentinelTopology

pytestmark = pytest.mark.slow


def _sentinel_client(topology: SentinelTopology) -> redis.Redis:
    sentinel = Sentinel(topology.sentinel_addresses, socket_timeout=1.0)
    return sentinel.master_for(topology.master_name, socket_timeout=1.0, decode_responses=True)


def test_starts_a_primary_a_replica_and_three_sentinels(
    sentinel_topology: SentinelTopology,
) -> None:
    primary = sentinel_topology.primary()
    assert primary.role() == "master"
    assert sentinel_topology.replica().role() == "slave"
    assert sentinel_topology.url == (
        "redis+sentinel://"
        + ",".join(f"127.0.0.1:{s.port}" for s in sentinel_topology.sentinels)
        + f"/{sentinel_topology.master_name}/0"
    )
    client = _sentinel_client(sentinel_topology)
    client.set("k", "v")
    assert primary.client().get("k") == "v"


def test_failover_swaps_primary_and_replica(sentinel_topology: SentinelTopology) -> None:
    old = sentinel_topology.primary()
    sentinel_topology.primary_client().set("before", "1")
    new_address = sentinel_topology.failover()
    assert new_address != old.address
    assert sentinel_topology.primary_address() == new_address
    assert sentinel_topology.node_at(new_address).role() == "master"
    assert old.role() == "slave"
    # The data written before a planned failover is on the new primary.
    assert sentinel_topology.primary_client().get("before") == "1"


def test_failover_without_waiting_for_the_demotion(sentinel_topology: SentinelTopology) -> None:
    old = sentinel_topology.primary()
    new_address = sentinel_topology.failover(wait_demoted=False)
    assert sentinel_topology.node_at(new_address).role() == "master"
    assert new_address != old.address


def test_pause_primary_resumes_it(sentinel_topology: SentinelTopology) -> None:
    paused = sentinel_topology.pause_primary(0.3)
    assert not paused.paused
    assert paused.client().ping()


def test_kill_primary_promotes_the_replica_and_restart_rejoins(
    sentinel_topology: SentinelTopology,
) -> None:
    replica = sentinel_topology.replica()
    killed = sentinel_topology.kill_primary()
    assert not killed.alive()
    assert sentinel_topology.primary_address() == replica.address
    assert replica.role() == "master"
    sentinel_topology.restart(killed)
    assert killed.role() == "slave"
    _sentinel_client(sentinel_topology).set("after", "1")
    assert sentinel_topology.primary_client().get("after") == "1"


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    topology = SentinelTopology(tmp_path / "t").start()
    processes = [n.process for n in [*topology.nodes, *topology.sentinels]]
    topology.stop()
    assert all(p is not None and p.poll() is not None for p in processes)
