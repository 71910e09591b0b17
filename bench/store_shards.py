"""Store-level scenario over shards (issue 19): one Redis, 3 independent primaries, a Cluster.

No sockets: the store API is driven directly, as the HotPathWriter drives it (heartbeats in
batches of ``--batch``, ``--concurrency`` batches in flight: several web processes' ticks at
once). For each shape a fresh worker process (its own Django settings from the environment,
as a deployed process has) runs three phases on ``--store-connections`` connections:

- connect storm: ``store.connect`` for every connection, ``--concurrency`` in flight;
- room joins: every other connection joins one of 1,000 rooms (one logged event each);
- heartbeat saturation: ``--rounds`` heartbeats per connection through ``heartbeat_many``.

Per phase it reads ``INFO cpu`` (used_cpu_user + used_cpu_sys) of EVERY Redis node before and
after, and reports operations/s, Redis CPU µs per operation per node, each node's share of the
Redis CPU, and Redis bytes per connection (the sum of the nodes' ``used_memory`` delta over
the connect phase). The same worker also runs on the code before sharding (``--before``: a
tree exported with ``git archive main | tar -x -C /tmp/before``) on one Redis, in the same
run, so the split's cost on one Redis is a ratio of two numbers measured side by side.

Run: ``.venv/bin/python -m bench.store_shards --before /tmp/before`` (or through
``python -m bench --scenarios store_shards``); ``--help`` lists the sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROOMS = 1000

# ------------------------------------------------------------------------------ the worker
# Runs inside one tree (this one, or the code before sharding): it imports only ``presence``
# and Django from whatever tree PYTHONPATH names, and talks to the nodes it is given.


def _ip(i: int) -> str:
    """A distinct client address per connection (as real clients have): one shared address
    would put every connection in one address-gate set and measure that set instead."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _node_cpu(clients: list[Any]) -> list[tuple[float, int, int]]:
    """Per node: used_cpu_user + used_cpu_sys (s), and the bytes it received and sent."""
    out = []
    for c in clients:
        info = c.info("cpu")
        stats = c.info("stats")
        cpu = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        out.append((cpu, int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])))
    return out


def _node_memory(clients: list[Any]) -> int:
    return sum(int(c.info("memory")["used_memory"]) for c in clients)


def _phase(name: str, ops: int, elapsed: float, before: list[Any], after: list[Any]) -> dict:
    used = [b[0] - a[0] for a, b in zip(before, after, strict=True)]
    net_in = sum(b[1] - a[1] for a, b in zip(before, after, strict=True))
    net_out = sum(b[2] - a[2] for a, b in zip(before, after, strict=True))
    total = sum(used) or 1e-9
    return {
        "phase": name,
        "ops": ops,
        "seconds": round(elapsed, 3),
        "ops_per_s": round(ops / elapsed),
        "redis_cpu_us_per_op": round(sum(used) * 1e6 / ops, 3),
        "redis_cpu_us_per_op_per_node": [round(u * 1e6 / ops, 3) for u in used],
        "redis_cpu_share_per_node": [round(u / total, 3) for u in used],
        # Client <-> Redis traffic (the INFO calls themselves are a few hundred bytes).
        "redis_net_in_bytes_per_op": round(net_in / ops, 1),
        "redis_net_out_bytes_per_op": round(net_out / ops, 1),
    }


async def _worker(
    nodes: list[str], connections: int, batch: int, rounds: int, conc: int, inflight: int
) -> dict:
    import django
    import redis

    django.setup()
    from presence import store as presence_store

    # Any: the two trees' store APIs differ (a client argument before sharding).
    store: Any = presence_store
    store.reset_clients()
    direct: list[Any] = [redis.Redis.from_url(url) for url in nodes]
    for c in direct:
        c.flushall()
    # The code before sharding takes the client as its first argument; the sharded store
    # picks the shard's client itself.
    legacy = "client" in inspect.signature(store.connect).parameters
    pre: tuple[Any, ...] = (store.get_async_redis(),) if legacy else ()
    sem = asyncio.Semaphore(conc)
    refs: list[Any] = []

    async def one_connect(i: int) -> None:
        cid = str(uuid.uuid4())
        async with sem:
            await store.connect(
                *pre, cid=cid, uid=i + 1, username=f"u{i + 1}", channel=f"c.{i}", ip=_ip(i)
            )
        refs[i] = store.ConnRef(cid, i + 1, ())

    refs = [None] * connections
    mem0, cpu0, t0 = _node_memory(direct), _node_cpu(direct), time.perf_counter()
    await asyncio.gather(*(one_connect(i) for i in range(connections)))
    t1, cpu1, mem1 = time.perf_counter(), _node_cpu(direct), _node_memory(direct)
    phases = [_phase("connect", connections, t1 - t0, cpu0, cpu1)]
    bytes_per_conn = round((mem1 - mem0) / connections)

    async def one_join(i: int) -> None:
        room = f"r{i % ROOMS}"
        async with sem:
            await store.room_join(*pre, refs[i], room)
        refs[i] = store.ConnRef(refs[i].cid, refs[i].uid, (room,))

    joiners = range(0, connections, 2)
    cpu0, t0 = _node_cpu(direct), time.perf_counter()
    await asyncio.gather(*(one_join(i) for i in joiners))
    t1, cpu1 = time.perf_counter(), _node_cpu(direct)
    phases.append(_phase("join", len(joiners), t1 - t0, cpu0, cpu1))
    mem2 = _node_memory(direct)

    chunks = [refs[i : i + batch] for i in range(0, connections, batch)] * rounds
    alive = 0

    async def one_batch(chunk: list[Any]) -> None:
        nonlocal alive
        async with sem:
            res = await store.heartbeat_many(*pre, chunk, {"msg:heartbeat": len(chunk)})
        alive += sum(1 for r in res if int(r) == 1)

    sem = asyncio.Semaphore(inflight)  # batches in flight: a few web processes' ticks
    cpu0, t0 = _node_cpu(direct), time.perf_counter()
    await asyncio.gather(*(one_batch(c) for c in chunks))
    t1, cpu1 = time.perf_counter(), _node_cpu(direct)
    beats = connections * rounds
    phases.append(_phase("heartbeat", beats, t1 - t0, cpu0, cpu1))
    result = {
        "legacy_api": legacy,
        "nodes": len(nodes),
        "connections": connections,
        "batch": batch,
        "rounds": rounds,
        "heartbeats_alive": alive,
        "redis_bytes_per_connection": bytes_per_conn,
        "redis_bytes_per_room_member": round((mem2 - mem1) / len(joiners)),
        "keys_per_node": [int(c.dbsize()) for c in direct],
        "phases": phases,
    }
    for c in direct:
        c.flushall()
        c.close()
    return result


# ------------------------------------------------------------------------------ the driver
def _env(tree: Path, tmp: Path, redis_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_REDIS_")}
    env.update(
        {
            "PYTHONPATH": str(tree),
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_hex(32),
            "DJANGO_LOG_LEVEL": "WARNING",
            # The 2 s default fired on this loaded 2-core machine while sockets opened.
            "PRESENCE_REDIS_CONNECT_TIMEOUT": "15",
        }
    )
    env.update(extra)
    return env


def run_shape(
    tree: Path, tmp: Path, redis_url: str, nodes: list[str], extra: dict[str, str], o: Any
) -> dict[str, Any]:
    """One worker process in ``tree`` against ``nodes``; its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(nodes)]
    cmd += ["--store-connections", str(o.store_connections), "--batch", str(o.batch)]
    cmd += ["--rounds", str(o.rounds), "--concurrency", str(o.concurrency)]
    cmd += ["--inflight", str(o.inflight)]
    out = subprocess.run(
        cmd, cwd=tree, env=_env(tree, tmp, redis_url, extra), capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker failed in {tree}:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_store_shards(o: Any) -> list[dict[str, Any]]:
    """Every shape (and the code before sharding, on one Redis, when ``o.before`` is set),
    interleaved ``o.repeat`` times; one record per (shape, repeat)."""
    sys.path.insert(0, str(ROOT))
    from config.embedded_redis import RedisServer

    # The suite's fixtures' classes (tests/support/cluster.py), imported by name: mypy checks
    # bench/, not the test support it would follow into.
    topo: Any = importlib.import_module("tests.support.cluster")

    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    single = RedisServer(tmp / "single").start()
    shards = topo.ShardsTopology(tmp / "shards").start()
    cluster = topo.ClusterTopology(tmp / "cluster").start()
    records: list[dict[str, Any]] = []
    try:
        shapes: list[tuple[str, Path, list[str], dict[str, str]]] = []
        if o.before:
            shapes.append(("before_single", Path(o.before), [single.url], {}))
        shard_env = {"PRESENCE_SHARDS": str(o.shards)}
        shapes.append(("single", ROOT, [single.url], shard_env))
        shards_env = {**shard_env, "PRESENCE_REDIS_SHARD_URLS": ",".join(shards.urls)}
        shapes.append(("shards3", ROOT, shards.urls, shards_env))
        cluster_env = {**shard_env, "PRESENCE_REDIS_CLUSTER_URL": cluster.url}
        shapes.append(("cluster3", ROOT, cluster.urls, cluster_env))
        wanted = set(o.shapes)
        for repeat in range(o.repeat):
            order = shapes if repeat % 2 == 0 else list(reversed(shapes))
            for name, tree, nodes, extra in order:
                if name not in wanted:
                    continue
                result = run_shape(tree, tmp, single.url, nodes, extra, o)
                record = {"scenario": "store_shards", "shape": name, "repeat": repeat}
                record["result"] = result
                print(json.dumps(record), flush=True)
                records.append(record)
    finally:
        cluster.stop()
        shards.stop()
        single.stop()
    return records


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per (shape, phase) and the issue's ratios and targets."""
    import statistics

    med: dict[str, dict[str, dict[str, Any]]] = {}
    for shape in {r["shape"] for r in records}:
        runs = [r["result"] for r in records if r["shape"] == shape]
        med[shape] = {}
        for phase in ("connect", "join", "heartbeat"):
            ps = [next(p for p in run["phases"] if p["phase"] == phase) for run in runs]
            nodes = len(ps[0]["redis_cpu_share_per_node"])
            med[shape][phase] = {
                "ops_per_s": statistics.median(p["ops_per_s"] for p in ps),
                "redis_cpu_us_per_op": statistics.median(p["redis_cpu_us_per_op"] for p in ps),
                "share_per_node": [
                    round(statistics.median(p["redis_cpu_share_per_node"][n] for p in ps), 3)
                    for n in range(nodes)
                ],
            }
        med[shape]["bytes_per_connection"] = {
            "value": statistics.median(run["redis_bytes_per_connection"] for run in runs)
        }
    out: dict[str, Any] = {"medians": med, "targets": []}
    one = med.get("single")
    for multi in ("shards3", "cluster3"):
        if one and multi in med:
            hb = med[multi]["heartbeat"]
            ratio = hb["redis_cpu_us_per_op"] / one["heartbeat"]["redis_cpu_us_per_op"]
            spread = all(abs(s - 1 / 3) <= 0.05 for s in hb["share_per_node"])
            out["targets"].append(
                {
                    "target": f"{multi}: each node 33 % ± 5 % of heartbeat Redis CPU",
                    "value": hb["share_per_node"],
                    "met": spread,
                }
            )
            out["targets"].append(
                {
                    "target": f"{multi}: Redis CPU per heartbeat <= 1.2x one node",
                    "value": round(ratio, 3),
                    "met": ratio <= 1.2,
                }
            )
    before = med.get("before_single")
    for name in ("single",):
        now = med.get(name)
        if not (now and before):
            continue
        for phase in ("heartbeat", "connect"):
            rate = now[phase]["ops_per_s"] / before[phase]["ops_per_s"]
            cpu = now[phase]["redis_cpu_us_per_op"] / before[phase]["redis_cpu_us_per_op"]
            out["targets"].append(
                {
                    "target": f"one Redis ({name}), {phase}: ops/s >= 0.9x before",
                    "value": round(rate, 3),
                    "met": rate >= 0.9,
                }
            )
            out["targets"].append(
                {
                    "target": f"one Redis ({name}), {phase}: Redis CPU/op <= 1.1x before",
                    "value": round(cpu, 3),
                    "met": cpu <= 1.1,
                }
            )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.store_shards", description=__doc__)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--store-connections", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500, help="heartbeats per call")
    p.add_argument("--rounds", type=int, default=3, help="heartbeats per connection")
    # 16: more connects at once only opened more sockets at once on this 2-core machine (their
    # connect timeouts fired under load); Redis runs one command at a time anyway.
    p.add_argument("--concurrency", type=int, default=16, help="connects/joins in flight")
    p.add_argument("--inflight", type=int, default=4, help="heartbeat batches in flight")
    p.add_argument("--shards", type=int, default=64, help="PRESENCE_SHARDS")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--before", help="tree of the code before sharding (git archive main)")
    p.add_argument("--shapes", default="before_single,single,shards3,cluster3")
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    return args


def main(argv: list[str] | None = None) -> None:
    """Driver (default) or, with ``--worker NODES``, one worker inside a tree."""
    o = parse_args(argv)
    if o.worker:
        args = (o.store_connections, o.batch, o.rounds, o.concurrency, o.inflight)
        result = asyncio.run(_worker(json.loads(o.worker), *args))
        print(json.dumps(result))
        return
    records = run_store_shards(o)
    report = summary(records)
    print(json.dumps(report, indent=1))
    o.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = o.results_dir / f"store_shards-{stamp}.json"
    path.write_text(json.dumps({"argv": sys.argv, "records": records, "summary": report}))
    print(f"written: {path}")


if __name__ == "__main__":
    main()


def run_from_bench(args: Any) -> dict[str, Any]:
    """``python -m bench --scenarios store_shards``: this scenario with the bench's --quick,
    --repeat and --before; its records and summary (the targets printed here too)."""
    argv = ["--repeat", str(args.repeat), "--results-dir", str(args.results_dir)]
    if args.quick:
        argv += ["--store-connections", "5000", "--rounds", "1"]
    if args.before:
        argv += ["--before", str(args.before)]
    else:
        argv += ["--shapes", "single,shards3,cluster3"]
    records = run_store_shards(parse_args(argv))
    report = summary(records)
    for t in report["targets"]:
        print(f"{'ok' if t['met'] else 'MISS':5} {t['target']}: {t['value']}", flush=True)
    return {"summary": report, "records": records}
