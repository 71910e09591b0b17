"""What an idle web process pays to follow every shard's event log (docs/performance.md).

    .venv/bin/python -m bench.reader_idle --shape single --seconds 60
    .venv/bin/python -m bench.reader_idle --shape shards --seconds 60
    .venv/bin/python -m bench.reader_idle --shape cluster --seconds 60

Starts its own Redis (one server; three independent servers; or a Cluster of three primaries
made with ``redis-cli --cluster create``, the test suite's fixture), then a child process
that sets Django up, starts the event loop's log reader (presence/live/eventlog.py: every
one of PRESENCE_SHARDS shards, 64 by default) and the session writer
(presence/jobs/sessionlog.py), and does nothing else. After a warm-up the child's CPU time
(user + system, every thread, ``/proc/<pid>/stat``) is read twice, ``--seconds`` apart: the
share of one core it used while idle. The Redis connections the child holds per node are
counted with CLIENT LIST. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.embedded_redis import RedisServer  # noqa: E402

CHILD = """
import asyncio
import os
import django
django.setup()
from presence.live import eventlog
from presence.jobs import sessionlog

async def run():
    await eventlog.ensure_reader()
    if os.environ.get("READER_IDLE_WRITER", "1") == "1":
        await sessionlog.ensure_session_writer()
    print("ready", flush=True)
    await asyncio.sleep(10**6)

asyncio.run(run())
"""


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def _clients(port: int) -> int:
    """Connections the server on ``port`` has open now."""
    clients: Any = redis.Redis(port=port).client_list()
    return len(clients)


def main() -> None:
    parser = argparse.ArgumentParser(description="idle cost of following every shard")
    parser.add_argument("--shape", choices=("single", "shards", "cluster"), default="single")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--no-writer", action="store_true", help="the log reader alone (no session writer)"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="reader-idle-"))
    servers: list[RedisServer] = []
    stops: list[Callable[[], None]] = []
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "PYTHONPATH": str(ROOT)}
    env["DATABASE_URL"] = f"sqlite:///{tmp / 'db.sqlite3'}"
    env["READER_IDLE_WRITER"] = "0" if args.no_writer else "1"
    try:
        control = RedisServer(tmp / "control").start()
        servers.append(control)
        env["REDIS_URL"] = control.url
        if args.shape == "single":
            ports = [control.port]
        elif args.shape == "shards":
            servers += [RedisServer(tmp / f"shard-{i}").start() for i in range(3)]
            ports = [s.port for s in servers[1:]]
            env["PRESENCE_REDIS_SHARD_URLS"] = ",".join(s.url for s in servers[1:])
        else:
            # The test suite's fixture (imported by name: the tests are not type-checked).
            fixture: Any = importlib.import_module("tests.support.cluster")
            cluster = fixture.ClusterTopology(tmp / "cluster").start()
            stops.append(cluster.stop)
            ports = [node.port for node in cluster.nodes]
            env["PRESENCE_REDIS_CLUSTER_URL"] = cluster.url
        before = {p: _clients(p) for p in ports}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD], env=env, cwd=ROOT, stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            if child.stdout.readline().strip() != b"ready":
                raise RuntimeError("the reader process did not start")
            time.sleep(args.warmup)
            conns = {p: _clients(p) - before[p] for p in ports}
            cpu0, t0 = _cpu_seconds(child.pid), time.monotonic()
            time.sleep(args.seconds)
            cpu1, t1 = _cpu_seconds(child.pid), time.monotonic()
        finally:
            child.kill()
            child.wait()
        result: dict[str, Any] = {
            "shape": args.shape,
            "shards": int(env.get("PRESENCE_SHARDS", 64)),
            "session_writer": not args.no_writer,
            "seconds": round(t1 - t0, 1),
            "cpu_seconds": round(cpu1 - cpu0, 3),
            "core_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
            "connections_per_node": list(conns.values()),
        }
        print(json.dumps(result))
    finally:
        for stop in stops:
            stop()
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
