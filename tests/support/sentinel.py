"""A real Redis Sentinel topology for failover tests (plugin of tests/conftest.py).

``SentinelTopology`` runs, from the redis-server binary the suite already uses, a primary, one
replica and three sentinels (``redis-server <conf> --sentinel``) on free loopback ports under a
temporary directory. Sentinels declare a node down after one second and finish a failover in a
few seconds, so tests can fail over (planned), kill -9 the primary (unplanned) or pause it
(SIGSTOP) and watch clients follow. Every wait is bounded; ``stop()`` kills every process, also
when a test fails (the ``sentinel_topology`` fixture calls it in its teardown).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from config.embedded_redis import free_port, redis_server_binary

MASTER_NAME = "presence-primary"
DOWN_AFTER_MS = 1000  # a node silent for 1 s is subjectively down
FAILOVER_TIMEOUT_MS = 2000  # bounds a failover's steps; also 2x this between automatic failovers
WAIT = 20.0  # default bound of every wait below (the machine is slow and shared)
# The first sync of a new replica, at start: under the suite's parallel workers it once took
# over 20 s (a fork and an RDB transfer queued behind four workers' processes).
START_WAIT = 60.0

Address = tuple[str, int]


def _wait_until(what: str, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``predicate`` until true; raise (naming ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError) as exc:  # a node restarting or paused
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last_error})")


class Node:
    """One redis-server process (data node or sentinel) on 127.0.0.1:``port``."""

    def __init__(self, name: str, directory: Path, port: int, *, sentinel: bool = False) -> None:
        self.name, self.directory, self.port, self.sentinel = name, directory, port, sentinel
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self, *, replica_of: Address | None = None) -> Node:
        """Start the process (a replica of ``replica_of`` when given), wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = self._args(replica_of)
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.paused = False

        _wait_until(f"{self.name} to answer PING", self._answers)
        return self

    def _args(self, replica_of: Address | None) -> list[str]:
        """The redis-server command line of this node."""
        if self.sentinel:
            return [redis_server_binary(), str(self.directory / "sentinel.conf"), "--sentinel"]
        args = [
            redis_server_binary(),
            *("--bind", "127.0.0.1", "--port", str(self.port)),
            *("--dir", str(self.directory), "--save", "", "--appendonly", "no"),
            *("--logfile", str(self.log), "--maxclients", "10000"),
        ]
        if replica_of is not None:
            args += ["--replicaof", replica_of[0], str(replica_of[1])]
        return args

    def _answers(self) -> bool:
        """Whether OUR process answers on the port. A PONG alone is not enough: when another
        worker's server took the port first, it answers while ours exits on its failed bind
        (and the topology would then join or flush a server it does not own)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited; see {self.log}")
        assert self.process is not None
        return int(self.client().info("server")["process_id"]) == self.process.pid

    def client(self, **kwargs: object) -> redis.Redis:
        """A short-timeout client on this node (decoded strings)."""
        options: dict[str, object] = {
            "socket_timeout": 1.0,
            "socket_connect_timeout": 1.0,
            "decode_responses": True,
        }
        options.update(kwargs)
        return redis.Redis(host="127.0.0.1", port=self.port, **options)  # type: ignore[arg-type]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def lost_its_port(self) -> bool:
        """Whether the process exited because another process bound its port first (the
        free port was picked before the start: a race with the suite's other workers)."""
        return (
            not self.alive()
            and self.log.exists()
            and "Address already in use" in self.log.read_text(errors="replace")
        )

    def take_new_port(self) -> None:
        """Another free port, and a fresh log (so ``lost_its_port`` reads this start only)."""
        self.kill()
        self.port = self._free_port()
        self.log.unlink(missing_ok=True)

    @staticmethod
    def _free_port() -> int:
        return free_port()

    def role(self) -> str:
        """``master`` or ``slave`` as the node reports it (raises when it does not answer)."""
        return str(self.client().info("replication")["role"])

    def kill(self) -> None:
        """SIGKILL (resuming a paused process first so it can die): its data is gone."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.paused = False

    def pause(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.alive() and self.paused:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)
        self.paused = False


def start_on_free_ports(nodes: list[Node], start: Callable[[], object]) -> None:
    """Run ``start``; when a node of ``nodes`` lost its port to another process in the
    meantime (seen in CI: "Address already in use"; the suite's xdist workers pick free ports
    at the same moment), give them all new ports and retry (three tries)."""
    for attempt in range(3):
        try:
            start()
            return
        except RuntimeError:
            if attempt == 2 or not any(node.lost_its_port() for node in nodes):
                raise
            for node in nodes:
                node.take_new_port()


class SentinelTopology:
    """A primary, one replica and three sentinels watching them, on free loopback ports."""

    def __init__(self, directory: Path | None = None, master_name: str = MASTER_NAME) -> None:
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="presence-sentinel-"))
        self.master_name = master_name
        self.nodes = [
            Node(f"redis-{i}", self.directory / f"redis-{i}", free_port()) for i in (0, 1)
        ]
        self.sentinels = [
            Node(f"sentinel-{i}", self.directory / f"sentinel-{i}", free_port(), sentinel=True)
            for i in (0, 1, 2)
        ]
        self._timers: list[threading.Timer] = []

    # -- addresses ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The project's Sentinel URL form for db 0 of this topology."""
        return self.url_for_db(0)

    def url_for_db(self, db: int) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/{db}"

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [s.address for s in self.sentinels]

    def primary_address(self) -> Address:
        """The primary's address as the first answering sentinel reports it."""
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            try:
                reply = sentinel.client().execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                )
            except (redis.RedisError, OSError):
                continue
            if reply:
                return (str(reply[0]), int(reply[1]))
        raise RuntimeError("no sentinel answered with the primary's address")

    def node_at(self, address: Address) -> Node:
        return next(n for n in self.nodes if n.port == address[1])

    def primary(self) -> Node:
        """The data node the sentinels call primary."""
        return self.node_at(self.primary_address())

    def replica(self) -> Node:
        """The other data node."""
        primary = self.primary()
        return next(n for n in self.nodes if n is not primary)

    def primary_client(self, **kwargs: object) -> redis.Redis:
        """A plain client on the current primary (to seed or inspect data directly)."""
        return self.primary().client(**kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SentinelTopology:
        """Start everything and wait until the sentinels know the replica and each other."""
        try:
            primary, replica = self.nodes
            start_on_free_ports([primary], lambda: primary.start())
            start_on_free_ports([replica], lambda: replica.start(replica_of=primary.address))
            self._wait_replica_synced(replica, primary, START_WAIT)

            def start_sentinels() -> None:
                for sentinel in self.sentinels:
                    self._write_sentinel_conf(sentinel, primary.address, replica.address)
                    sentinel.start()

            # Each sentinel's config names its peers' ports: a lost port re-picks them all.
            start_on_free_ports(self.sentinels, start_sentinels)
            _wait_until("the sentinels to see the replica and each other", self._sentinels_settled)
        except BaseException:
            self.stop()
            raise
        return self

    def _write_sentinel_conf(self, sentinel: Node, primary: Address, replica: Address) -> None:
        # Sentinel rewrites its config file (discovered peers, epochs): it must be writable.
        # The peers and the replica are written in as Sentinel itself would after discovering
        # them, so the topology is usable at once instead of after a few hello periods (2 s).
        sentinel.directory.mkdir(parents=True, exist_ok=True)
        name = self.master_name
        peers = [
            f"sentinel known-sentinel {name} 127.0.0.1 {other.port} {self._myid(other)}"
            for other in self.sentinels
            if other is not sentinel
        ]
        (sentinel.directory / "sentinel.conf").write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {sentinel.port}",
                    f"dir {sentinel.directory}",
                    f"logfile {sentinel.log}",
                    f"sentinel myid {self._myid(sentinel)}",
                    f"sentinel monitor {name} {primary[0]} {primary[1]} 2",
                    f"sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {name} 1",
                    f"sentinel known-replica {name} {replica[0]} {replica[1]}",
                    *peers,
                    "",
                ]
            )
        )

    def _myid(self, sentinel: Node) -> str:
        """A fixed 40-hex-digit Sentinel id per sentinel of this topology."""
        return f"{self.sentinels.index(sentinel) + 1:x}".rjust(8, "0") + f"{sentinel.port:032x}"

    def _sentinels_settled(self) -> bool:
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            raw = sentinel.client().execute_command("SENTINEL", "MASTER", self.master_name)
            fields = dict(zip(raw[::2], raw[1::2], strict=False)) if isinstance(raw, list) else raw
            if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < 2:
                return False
            if "s_down" in fields["flags"] or "o_down" in fields["flags"]:
                return False
        return True

    def _wait_replica_synced(self, replica: Node, primary: Node, timeout: float = WAIT) -> None:
        def synced() -> bool:
            info = replica.client().info("replication")
            return (
                info["role"] == "slave"
                and int(info["master_port"]) == primary.port
                and info["master_link_status"] == "up"
            )

        _wait_until(f"{replica.name} to replicate {primary.name}", synced, timeout)

    def stop(self) -> None:
        """Kill every process and remove the files; safe to call twice or after a failure."""
        for timer in self._timers:
            timer.cancel()
        for node in [*self.sentinels, *self.nodes]:
            try:
                node.kill()
            except Exception:
                pass
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- faults -------------------------------------------------------------------------------

    def failover(self, *, wait_demoted: bool = True, timeout: float = WAIT) -> Address:
        """A planned failover (SENTINEL FAILOVER); returns the new primary's address once the
        replica is promoted and (``wait_demoted``) the old primary replicates from it.

        Measured here: the sentinels name the new primary about 1 s after the command, but
        demote the old one only about 10 s later (Sentinel reconfigures a node reporting the
        wrong role after 4 publish periods). Until then the old primary still accepts writes
        from clients that kept their connections to it; those writes are lost when it becomes
        a replica. ``wait_demoted=False`` returns inside that window.
        """
        old = self.primary()
        new = self.replica()
        # The old primary must be a good replica for the failover after this one: wait until
        # the sentinel that starts it lists the replica as healthy.
        self._wait_replica_synced(new, old, timeout)
        reply = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = (
                    self.sentinels[0]
                    .client()
                    .execute_command("SENTINEL", "FAILOVER", self.master_name)
                )
                break
            except redis.ResponseError as exc:  # NOGOODSLAVE right after a topology change
                reply = exc
                time.sleep(0.2)
        if isinstance(reply, Exception):
            raise reply
        self.wait_primary_changed(old.address, timeout=timeout)
        _wait_until(f"{new.name} to be promoted", lambda: new.role() == "master", timeout)
        if wait_demoted:
            self._wait_replica_synced(old, new, timeout)
        return new.address

    def wait_primary_changed(self, old: Address, timeout: float = WAIT) -> Address:
        """Wait until every live sentinel names a primary other than ``old``; return it."""

        def changed() -> bool:
            for sentinel in self.sentinels:
                if not sentinel.alive() or sentinel.paused:
                    continue
                reply = sentinel.client().execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                )
                if (str(reply[0]), int(reply[1])) == old:
                    return False
            return True

        _wait_until(f"the sentinels to name a primary other than {old}", changed, timeout)
        new = self.primary_address()
        _wait_until(
            f"{new} to answer as primary", lambda: self.node_at(new).role() == "master", timeout
        )
        return new

    def kill_primary(self, *, wait: bool = True, timeout: float = WAIT) -> Node:
        """kill -9 the primary (unplanned failover); by default wait until the replica is
        promoted. Returns the killed node, for ``restart``."""
        old = self.primary()
        old.kill()
        if wait:
            self.wait_primary_changed(old.address, timeout=timeout)
        return old

    def restart(self, node: Node, *, timeout: float = WAIT) -> None:
        """Start a killed data node again, empty, as a replica of the current primary; wait
        until it is in sync and the sentinels see it."""
        assert not node.alive(), f"{node.name} is still running"
        primary = self.primary()
        node.start(replica_of=primary.address)
        self._wait_replica_synced(node, primary, timeout)

    def pause_primary(self, seconds: float, *, wait: bool = True) -> Node:
        """SIGSTOP the primary for ``seconds`` then SIGCONT it. With ``wait`` (default) this
        blocks for the pause; otherwise a timer resumes it (``stop()`` cancels and kills)."""
        node = self.primary()
        node.pause()
        if wait:
            try:
                time.sleep(seconds)
            finally:
                node.resume()
        else:
            timer = threading.Timer(seconds, node.resume)
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return node


@pytest.fixture
def sentinel_topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A fresh primary + replica + three sentinels for one test, killed afterwards."""
    topology = SentinelTopology(tmp_path / "sentinel")
    try:
        yield topology.start()
    finally:
        topology.stop()
