"""What following every shard's event log costs one web process (issue 19, docs/capacity.md).

For each shape (one Redis; 3 independent primaries; a 3-primary Cluster) a reader process
starts the web process's event-log reader (``presence.live.eventlog.ensure_reader``: it follows
every logical shard) and nothing else. The driver then measures, from /proc/<pid>/stat:

- idle: the reader process's CPU over ``--window`` seconds with nothing happening, and the
  Redis commands per second it causes on every node (INFO stats total_commands_processed);
- loaded: ``--connections`` connects (each logs ``open`` and the user's global ``join``) and
  as many closes, written by the driver; the reader's CPU per event read, where events = the
  growth of every shard's stream (XLEN summed).

Run: ``.venv/bin/python -m bench.reader_shards`` (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.shapes import add_shape_options, parse_shape_options, run_shapes, write_results

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _commands(clients: list[Any]) -> list[int]:
    return [int(c.info("stats")["total_commands_processed"]) for c in clients]


async def _reader_main() -> None:
    import django

    django.setup()
    from presence.live.eventlog import ensure_reader

    await ensure_reader()
    print("ready", flush=True)
    await asyncio.sleep(3600)


async def _write(n: int) -> int:
    """``n`` connects then their closes through the store; returns the operations done."""
    from presence import store

    sem = asyncio.Semaphore(16)
    refs: list[Any] = []

    async def one(i: int) -> None:
        cid = str(uuid.uuid4())
        async with sem:
            ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            await store.connect(cid=cid, uid=i + 1, username=f"u{i}", channel=f"c.{i}", ip=ip)
        refs.append(store.ConnRef(cid, i + 1, ()))

    await asyncio.gather(*(one(i) for i in range(n)))
    for i in range(0, len(refs), 100):
        await store.end_connections(refs[i : i + 100], reason="closed")
    return 2 * n


def _events(nodes: list[str]) -> int:
    """Entries in every shard's stream, summed (the keys are the store's: Keys(shard))."""
    import redis

    from presence.store.keys import Keys
    from presence.store.shards import all_shards

    total = 0
    cluster = os.environ.get("PRESENCE_REDIS_CLUSTER_URL")
    if cluster:
        rc: Any = redis.RedisCluster.from_url(cluster)
        total = sum(int(rc.xlen(Keys(s).events)) for s in all_shards())
        rc.close()
        return total
    for url in nodes:
        c: Any = redis.Redis.from_url(url)
        total += sum(int(c.xlen(Keys(s).events)) for s in all_shards())
        c.close()
    return total


def measure(nodes: list[str], env: dict[str, str], o: Any) -> dict[str, Any]:
    """One shape: start a reader process, measure it idle, then while the driver writes."""
    import django
    import redis

    os.environ.update(env)
    django.setup()
    from presence import store

    direct = [redis.Redis.from_url(url) for url in nodes]
    for c in direct:
        c.flushall()
    cmd = [sys.executable, "-m", "bench.reader_shards", "--reader"]
    reader = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError("reader did not start")
        time.sleep(3.0)  # its first reads and start-up allocations
        cpu0, cmd0, t0 = _proc_cpu(reader.pid), _commands(direct), time.monotonic()
        time.sleep(o.window)
        cpu1, cmd1, t1 = _proc_cpu(reader.pid), _commands(direct), time.monotonic()
        idle = (cpu1 - cpu0) / (t1 - t0)
        # The driver's own commands (2 INFO per node) are subtracted.
        rates = [round((b - a - 1) / (t1 - t0), 2) for a, b in zip(cmd0, cmd1, strict=True)]
        store.reset_clients()
        events0, cpu0 = _events(nodes), _proc_cpu(reader.pid)
        asyncio.run(_write(o.connections))
        time.sleep(2.0)  # the reader catches up (it blocks at most READ_BLOCK_MS)
        events = _events(nodes) - events0
        used = _proc_cpu(reader.pid) - cpu0 - idle * 2.0
        return {
            "nodes": len(nodes),
            "shards": store.shard_count(),
            "window_s": o.window,
            "idle_cpu_percent_of_a_core": round(idle * 100, 3),
            "idle_redis_commands_per_s_per_node": rates,
            "events": events,
            "reader_cpu_us_per_event": round(used * 1e6 / max(events, 1), 1),
        }
    finally:
        reader.kill()
        reader.wait()
        for c in direct:
            c.flushall()


def run(o: Any) -> list[dict[str, Any]]:
    """Every shape in turn (each measured by a fresh driver process: settings per shape)."""

    def command(nodes: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "bench.reader_shards", "--measure", json.dumps(nodes)]
        return [*cmd, "--window", str(o.window), "--connections", str(o.connections)]

    return run_shapes("reader_shards", o.shapes, command, shards=o.shards)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.reader_shards", description=__doc__)
    p.add_argument("--reader", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--window", type=float, default=60.0, help="idle seconds measured")
    p.add_argument("--connections", type=int, default=5000, help="connects (and closes)")
    add_shape_options(p)
    return parse_shape_options(p, argv)


def main(argv: list[str] | None = None) -> None:
    """Driver (default); ``--measure NODES``: one shape; ``--reader``: the reader process."""
    o = parse_args(argv)
    if o.reader:
        asyncio.run(_reader_main())
        return
    if o.measure:
        print(json.dumps(measure(json.loads(o.measure), dict(os.environ), o)))
        return
    write_results(o.results_dir, "reader_shards", run(o))


if __name__ == "__main__":
    main()
