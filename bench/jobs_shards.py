"""Background work per shard (issue 19): sweep expiries/s and flush rows/s at 1 and 3 nodes.

For each shape (one Redis; 3 independent primaries; a 3-primary Cluster) a fresh worker process
(settings from its environment, as a Celery worker has) registers ``--connections``
connections through the store, with one live ``ConnectionSession`` row each in PostgreSQL
(``--database-url``: the per-shard runs use a thread pool only on PostgreSQL; SQLite takes
one writer at a time), then times the branch's job functions as beat runs them:

- flush: every connection heartbeats once, then ``flush_stats()`` runs until a run writes no
  more rows: last-seen rows/s (``heartbeat_rows`` / wall time);
- sweep: every connection heartbeats once more with a clock ``TTL + 5 s`` in the past (all
  lapsed), then ``sweep_expired()`` runs until nothing is left: expiries/s (``ended`` / wall
  time).

Each reports the Redis CPU per node (INFO cpu before/after) and the worker's own CPU. Run:
``.venv/bin/python -m bench.jobs_shards --database-url postgres://postgres@127.0.0.1/<db>``
(an empty database it may migrate and fill; or through ``python -m bench --scenarios
jobs_shards``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.shapes import add_shape_options, parse_shape_options, run_shapes, write_results

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _ip(i: int) -> str:
    """A distinct client address per connection (as real clients have): one shared address
    would put every connection in one address-gate set and measure that set instead."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _cpu(clients: list[Any]) -> list[float]:
    out = []
    for c in clients:
        info = c.info("cpu")
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(name: str, clients: list[Any], run: Any, count: Any, more: Any) -> dict[str, Any]:
    """Call ``run()`` while ``more(report)``; items (``count``), rate and CPU of the loop."""
    cpu0, own0, t0 = _cpu(clients), _self_cpu(), time.perf_counter()
    done, runs = 0, 0
    while runs < 200:
        report = run()
        runs += 1
        n = count(report)
        done += n
        if not more(report, n):
            break
    elapsed = time.perf_counter() - t0
    used = [b - a for a, b in zip(cpu0, _cpu(clients), strict=True)]
    total = sum(used) or 1e-9
    return {
        "job": name,
        "items": done,
        "runs": runs,
        "seconds": round(elapsed, 3),
        "items_per_s": round(done / elapsed),
        "redis_cpu_us_per_item": round(total * 1e6 / max(done, 1), 2),
        "redis_cpu_share_per_node": [round(u / total, 3) for u in used],
        "worker_cpu_us_per_item": round((_self_cpu() - own0) * 1e6 / max(done, 1), 1),
    }


async def _register(n: int, uid: int) -> list[Any]:
    from presence import store

    sem = asyncio.Semaphore(64)
    refs: list[Any] = []

    async def one(i: int) -> None:
        cid = str(uuid.uuid4())
        async with sem:
            await store.connect(cid=cid, uid=uid + i, username=f"u{i}", channel=f"c.{i}", ip=_ip(i))
        refs.append(store.ConnRef(cid, uid + i, ()))

    await asyncio.gather(*(one(i) for i in range(n)))
    return refs


async def _beat(refs: list[Any], now: int | None) -> None:
    from presence import store

    for i in range(0, len(refs), 500):
        await store.heartbeat_many(refs[i : i + 500], now=now)


def worker(nodes: list[str], connections: int) -> dict[str, Any]:
    """Inside one shape's process: register, flush, sweep; the JSON result."""
    import django
    import redis

    django.setup()
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from presence import store
    from presence.conf import app_settings
    from presence.jobs import flush, periodic, sweep
    from sessions_app.models import ConnectionSession

    direct: list[Any] = [redis.Redis.from_url(url) for url in nodes]
    for c in direct:
        c.flushall()
    store.reset_clients()
    ConnectionSession.objects.all().delete()
    user, _ = get_user_model().objects.get_or_create(username="bench-jobs")
    refs = asyncio.run(_register(connections, 1))
    now = timezone.now()
    ConnectionSession.objects.bulk_create(
        [ConnectionSession(id=r.cid, user=user, channel_name="c", connected_at=now) for r in refs],
        batch_size=5000,
    )
    asyncio.run(_beat(refs, None))
    # A run writes every row that heartbeated, up to its cap (then the next run goes on).
    flushed = _timed(
        "flush",
        direct,
        flush.flush_stats,
        lambda r: r.heartbeat_rows,
        lambda r, n: r.heartbeat_capped,
    )
    past = store.now_ms() - int(app_settings.TTL * 1000) - 5000
    asyncio.run(_beat(refs, past))
    # A run is capped per shard (batches, time budget): runs until one ends nothing more.
    swept = _timed("sweep", direct, sweep.sweep_expired, lambda r: r.ended, lambda r, n: n > 0)
    result = {
        "nodes": len(nodes),
        "connections": connections,
        "shards": store.shard_count(),
        "shard_workers": periodic.shard_workers(),
        "jobs": [flushed, swept],
        "sessions_still_live": ConnectionSession.objects.filter(ended_at__isnull=True).count(),
        "keys_per_node_after": [int(c.dbsize()) for c in direct],
    }
    for c in direct:
        c.flushall()
    return result


def run(o: Any) -> list[dict[str, Any]]:
    """Every shape, one worker process each; one record per shape."""

    def command(nodes: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "bench.jobs_shards", "--worker", json.dumps(nodes)]
        return [*cmd, "--connections", str(o.connections)]

    def migrate(env: dict[str, str]) -> None:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
        )

    return run_shapes(
        "jobs_shards",
        o.shapes,
        command,
        shards=o.shards,
        database_url=o.database_url,
        prepare=migrate,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.jobs_shards", description=__doc__)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--connections", type=int, default=20_000)
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", ""),
        help="an empty PostgreSQL database (default: $BENCH_DATABASE_URL)",
    )
    add_shape_options(p)
    return parse_shape_options(p, argv)


def main(argv: list[str] | None = None) -> None:
    """Driver (default) or, with ``--worker NODES``, one shape's worker."""
    o = parse_args(argv)
    if o.worker:
        print(json.dumps(worker(json.loads(o.worker), o.connections)))
        return
    if not o.database_url:
        raise SystemExit("--database-url (or BENCH_DATABASE_URL): an empty PostgreSQL database")
    write_results(o.results_dir, "jobs_shards", run(o))


if __name__ == "__main__":
    main()


def run_from_bench(args: Any) -> dict[str, Any]:
    """``python -m bench --scenarios jobs_shards`` (needs BENCH_DATABASE_URL: PostgreSQL)."""
    argv = ["--results-dir", str(args.results_dir)]
    if args.quick:
        argv += ["--connections", "2000"]
    o = parse_args(argv)
    if not o.database_url:
        return {"not_run": "BENCH_DATABASE_URL (an empty PostgreSQL database) is not set"}
    return {"records": run(o)}
