"""The three shapes of the presence store for the per-shard benchmarks, and their runs.

bench/jobs_shards.py and bench/reader_shards.py measure the same way: start one Redis, 3
independent primaries and a 3-primary Cluster (the suite's fixtures' classes,
tests/support/cluster.py), then run one fresh process per shape (settings come from its
environment, so each shape needs its own) and collect the JSON line it prints last.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_shapes(
    scenario: str,
    shape_names: list[str],
    command: Callable[[list[str]], list[str]],
    *,
    shards: int,
    database_url: str | None = None,
    prepare: Callable[[dict[str, str]], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per shape of ``shape_names`` (``single``, ``shards3``, ``cluster3``): the
    last JSON line printed by ``command(node_urls)`` run from the project root with the
    shape's settings. ``database_url``: the processes' database (default: a fresh SQLite
    file); ``prepare(env)`` runs once before the shapes (a migration)."""
    from config.embedded_redis import RedisServer

    # Imported by name: mypy checks bench/, not the test support it would follow into.
    topo: Any = importlib.import_module("tests.support.cluster")
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{scenario}-"))
    single = RedisServer(tmp / "single").start()
    sharded = topo.ShardsTopology(tmp / "shards").start()
    cluster = topo.ClusterTopology(tmp / "cluster").start()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_REDIS_")}
    base.update(
        {
            "REDIS_URL": single.url,
            "DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_hex(32),
            "DJANGO_LOG_LEVEL": "WARNING",
            # The 2 s default fired on this loaded 2-core machine while sockets opened.
            "PRESENCE_REDIS_CONNECT_TIMEOUT": "15",
            "PRESENCE_SHARDS": str(shards),
        }
    )
    shapes: dict[str, tuple[list[str], dict[str, str]]] = {
        "single": ([single.url], {}),
        "shards3": (sharded.urls, {"PRESENCE_REDIS_SHARD_URLS": ",".join(sharded.urls)}),
        "cluster3": (cluster.urls, {"PRESENCE_REDIS_CLUSTER_URL": cluster.url}),
    }
    records = []
    try:
        if prepare is not None:
            prepare(base)
        for name in shape_names:
            nodes, extra = shapes[name]
            out = subprocess.run(
                command(nodes), cwd=ROOT, env={**base, **extra}, capture_output=True, text=True
            )
            if out.returncode != 0:
                raise RuntimeError(f"{scenario} {name} failed:\n{out.stderr[-3000:]}")
            record = {"scenario": scenario, "shape": name}
            record["result"] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(record), flush=True)
            records.append(record)
    finally:
        cluster.stop()
        sharded.stop()
        single.stop()
    return records


def write_results(results_dir: Path, scenario: str, records: list[dict[str, Any]]) -> Path:
    """Write ``records`` to ``<results_dir>/<scenario>-<UTC stamp>.json``; its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = results_dir / f"{scenario}-{stamp}.json"
    path.write_text(json.dumps({"argv": sys.argv, "records": records}))
    print(f"written: {path}")
    return path


def add_shape_options(p: argparse.ArgumentParser) -> None:
    """The options every per-shape benchmark takes: --shards, --shapes, --results-dir."""
    p.add_argument("--shards", type=int, default=64, help="PRESENCE_SHARDS")
    p.add_argument("--shapes", default="single,shards3,cluster3")
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")


def parse_shape_options(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``p``'s arguments, ``shapes`` split into a list of shape names."""
    args = p.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    return args
