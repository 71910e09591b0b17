"""The process registry: every web process announces itself in Redis; ghosts are found from it.

Each web process (one event loop serving sockets) keeps a record in Redis, refreshed every
``PRESENCE_PROCESS_REFRESH`` seconds by a background task and expiring after three missed
refreshes, so a crashed or stopped process disappears by itself:

* ``{P}:proc:<id>`` -- id, host, pid, version, started_at, sockets, rss_bytes,
  loop_lag_seconds (the worst delay of a timer since the last refresh: a stalled loop
  delays every socket of the process), asyncio_tasks, last_seen;
* ``{P}:proc:<id>:conns`` -- the ids of the connections it holds a socket for, sent as the
  changes since the previous refresh (a full rewrite when Redis lost the set);
* ``{P}:procs`` -- the index of live processes.

Beside the refresher, each process runs its inspector (presence.live.inspector): operators
ask it, through Redis, for its tasks, threads, collector, loop-lag history (kept here, one
probe per LAG_TICK for two minutes) and a CPU profile.

:func:`list_processes` reads them (the metrics collector, the staff JSON endpoint, the
operator console, ``manage.py presence_status``); the ghost reconciliation
(:mod:`presence.jobs.reconcile`) compares them with the connections Redis holds as online.

WARNING: nothing here runs per frame. The consumer reports opens and closes through
:func:`track_open` / :func:`track_close` (set operations in memory); Redis is written once
per refresh period per process.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import resource
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TypedDict

from redis.exceptions import RedisError

from presence import store
from presence.conf import app_settings
from presence.live import introspect
from presence.live.inspector import Inspector

logger = logging.getLogger(__name__)

# How often the loop-lag probe wakes up: lag is how much later than this it actually runs.
LAG_TICK = 0.25
# Lag probes kept for the process inspector's history (two minutes at LAG_TICK).
LAG_HISTORY = 480


class ProcessRecord(TypedDict):
    """One registered web process, as :func:`list_processes` returns it."""

    id: str  # host:pid:<random>, unique even when a pid is reused (containers: pid 1)
    host: str
    pid: int
    version: str  # PRESENCE_VERSION of the code it runs
    started_at: float  # Unix seconds
    sockets: int  # WebSocket connections it holds
    rss_bytes: int  # resident memory
    loop_lag_seconds: float  # worst timer delay since its previous refresh
    asyncio_tasks: int  # tasks alive in its event loop (a leak shows as growth)
    last_seen: float  # Unix seconds of its last refresh


def record_ttl_ms() -> int:
    """How long a record outlives its last refresh: three missed refreshes, at least 2 s."""
    return int(max(3 * app_settings.PROCESS_REFRESH, 2.0) * 1000)


def rss_bytes() -> int:
    """Resident memory of this process (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # ru_maxrss is kilobytes on Linux (bytes on macOS): good enough as a fallback.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class LocalProcess:
    """This process's own record and the connections it holds (one per process)."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    id: str = ""
    held: set[str] = field(default_factory=set)
    # Changes to ``held`` not yet published; ``rewrite``: publish the whole set next time.
    added: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    rewrite: bool = True
    lag_max: float = 0.0  # worst lag since the last publish
    lag_last: float = 0.0  # the worst lag of the previous window (what was published)
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[None] | None = None
    failing: bool = False
    # (Unix seconds, lag) of each probe, the newest last: the inspector's loop-lag history.
    lags: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=LAG_HISTORY))
    inspector: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.id = self.id or f"{self.host}:{self.pid}:{secrets.token_hex(3)}"

    # ----------------------------------------------------------------- sockets
    def track_open(self, cid: str) -> None:
        """A socket of ``cid`` is held from now on."""
        self.held.add(cid)
        if cid in self.removed:
            self.removed.discard(cid)
        else:
            self.added.add(cid)

    def track_close(self, cid: str) -> None:
        """The socket of ``cid`` closed."""
        if cid not in self.held:
            return
        self.held.discard(cid)
        if cid in self.added:
            self.added.discard(cid)
        else:
            self.removed.add(cid)

    # ----------------------------------------------------------------- the record
    def record(self) -> ProcessRecord:
        """This process's record as of now."""
        loop = self.loop
        tasks = 0
        if loop is not None and not loop.is_closed():
            try:
                tasks = len(asyncio.all_tasks(loop))
            except RuntimeError:  # the set changed size while another thread read it
                tasks = 0
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "version": app_settings.VERSION,
            "started_at": self.started_at,
            "sockets": len(self.held),
            "rss_bytes": rss_bytes(),
            "loop_lag_seconds": round(max(self.lag_max, self.lag_last), 6),
            "asyncio_tasks": tasks,
            "last_seen": time.time(),
        }

    async def publish(self) -> None:
        """Write the record and the changes to the held set (one MULTI; two on a rewrite)."""
        record = self.record()
        client = store.get_async_redis()
        ttl = record_ttl_ms()
        fields = _to_hash(record)
        if self.rewrite:
            self.added.clear()
            self.removed.clear()
            expected = len(self.held)
            size = await store.publish_process(
                client, self.id, fields, full=list(self.held), ttl_ms=ttl
            )
            self.rewrite = size != expected
        else:
            added, removed = self.added, self.removed
            self.added, self.removed = set(), set()
            expected = len(self.held)
            try:
                size = await store.publish_process(
                    client, self.id, fields, added=added, removed=removed, ttl_ms=ttl
                )
            except BaseException:
                self.rewrite = True  # the changes may or may not have landed
                raise
            if size != expected:
                # Redis lost the set (restart, flush, expiry after a long stall): rewrite now,
                # or the reconciliation would count this process's sockets as ghosts.
                self.rewrite = True
                await self.publish()
                return
        self.lag_last, self.lag_max = self.lag_max, 0.0

    def lag_history(self) -> list[tuple[float, float]]:
        """The loop-lag probes of the last minutes: (Unix seconds, lag seconds), oldest first."""
        return list(self.lags)

    async def withdraw(self) -> None:
        """Stop refreshing and remove the record now (a graceful shutdown), not after its TTL."""
        for task in (self.task, self.inspector):
            if task is not None:
                task.cancel()
        try:
            async with asyncio.timeout(1.0):  # best effort: Redis may be gone already
                await store.aremove_process(store.get_async_redis(), self.id)
        except Exception as exc:  # the record expires by itself
            logger.info("process registry: %s not withdrawn (%r); it expires", self.id, exc)

    async def run(self) -> None:
        """Probe the loop's lag every LAG_TICK and publish every PRESENCE_PROCESS_REFRESH."""
        loop = asyncio.get_running_loop()
        next_publish = loop.time()
        while True:
            if loop.time() >= next_publish:
                next_publish = loop.time() + app_settings.PROCESS_REFRESH
                try:
                    # Bounded: a stalled Redis must not stall the refresher (nor its lag probe).
                    async with store.bounded():
                        await self.publish()
                except (RedisError, OSError, TimeoutError) as exc:
                    if not self.failing:  # one line per outage
                        logger.warning("process registry: cannot publish %s: %s", self.id, exc)
                    self.failing = True
                else:
                    if self.failing:
                        logger.info("process registry: publishing %s again", self.id)
                    self.failing = False
            started = loop.time()
            await asyncio.sleep(LAG_TICK)
            lag = loop.time() - started - LAG_TICK
            self.lag_max = max(self.lag_max, lag)
            self.lags.append((time.time(), lag))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the refresh task in ``loop`` (the server's loop; tests start one per loop)."""
        self.loop = loop
        # A context of its own: started from whichever request or socket came first, the task
        # must not carry that one's request or session id into its log lines.
        self.task = loop.create_task(
            self.run(), name="presence-process-registry", context=contextvars.Context()
        )
        # The operators' inspector answers through Redis beside the refresher; the task clock
        # gives its task-leak view the age of every task created from now on.
        introspect.install_task_clock(loop)
        if self.inspector is not None:
            self.inspector.cancel()
        self.inspector = loop.create_task(
            Inspector(self).run(), name="presence-inspector", context=contextvars.Context()
        )
        self.rewrite = True


def _to_hash(record: ProcessRecord) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {}
    for name, value in record.items():
        if name in ("started_at", "last_seen"):
            out[name] = int(float(value) * 1000)  # type: ignore[arg-type]  # stored as ms
        else:
            out[name] = value  # type: ignore[assignment]
    return out


def _from_hash(raw: dict[str, str]) -> ProcessRecord:
    return {
        "id": raw.get("id", ""),
        "host": raw.get("host", ""),
        "pid": int(raw.get("pid") or 0),
        "version": raw.get("version", ""),
        "started_at": int(raw.get("started_at") or 0) / 1000,
        "sockets": int(raw.get("sockets") or 0),
        "rss_bytes": int(raw.get("rss_bytes") or 0),
        "loop_lag_seconds": float(raw.get("loop_lag_seconds") or 0.0),
        "asyncio_tasks": int(raw.get("asyncio_tasks") or 0),
        "last_seen": int(raw.get("last_seen") or 0) / 1000,
    }


# --------------------------------------------------------------------------- this process
_local = LocalProcess()


def local() -> LocalProcess:
    """This process's registry entry."""
    return _local


def ensure_started() -> None:
    """Start the refresh task in the running loop unless it runs there already (cheap)."""
    loop = asyncio.get_running_loop()
    task = _local.task
    if _local.loop is loop and task is not None and not task.done():
        return
    _local.start(loop)


def track_open(cid: str) -> None:
    """The consumer of ``cid`` is registered: start the refresh task if needed, count it.

    Called through :func:`presence.obs.metrics.on_connection` (wired in ``PresenceConfig``).
    """
    ensure_started()
    _local.track_open(cid)


def track_close(cid: str) -> None:
    """The consumer of ``cid`` ended."""
    _local.track_close(cid)


# --------------------------------------------------------------------------- reads
def list_processes() -> list[ProcessRecord]:
    """Every live web process's record, from the configured Redis (sorted by host, pid)."""
    records = [_from_hash(raw) for raw in store.read_processes(store.get_redis())]
    return sorted(records, key=lambda r: (r["host"], r["pid"], r["id"]))
