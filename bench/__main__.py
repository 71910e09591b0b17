"""Presence benchmark: hot-path throughput, Redis memory per connection, end-to-end latency.

Run with ``make bench`` (or ``.venv/bin/python -m bench --help``). It starts its own private
redis-server and, for the end-to-end part, its own uvicorn process on a free port with a
throw-away SQLite database; it never touches the shared services of the machine.

Targets (docs/performance.md): a heartbeat costs one Redis round trip and no SQL; batched
heartbeats sustain >= 20,000/s through the store on one core; Redis holds a connection in
<= 1.5 KiB; the end-to-end heartbeat ack p95 stays under 50 ms with 500 connected clients
each beating every 0.5 s (1,000 heartbeats/s, 50 times what 500 real clients send).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup_django(redis_url: str, db_path: Path) -> None:
    os.environ["REDIS_URL"] = redis_url
    os.environ["DATABASE_URL"] = f"sqlite:///{db_path}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_store(connections: int, batch: int, rounds: int) -> dict[str, Any]:
    """Heartbeats per second through heartbeat.lua, and Redis bytes per connection."""
    from presence import store

    client = store.get_async_redis()
    await client.flushall()
    base = int((await client.info("memory"))["used_memory"])
    refs = []
    for i in range(connections):
        cid = str(uuid.uuid4())
        await store.connect(client, cid=cid, uid=i + 1, username=f"u{i + 1}", channel=f"c.{i}")
        ref = store.ConnRef(cid, i + 1, ("lobby",) if i % 2 == 0 else ())
        if ref.rooms:
            await store.room_join(client, ref, "lobby")
        refs.append(ref)
    used = int((await client.info("memory"))["used_memory"]) - base
    before = int((await client.info("commandstats"))["cmdstat_evalsha"]["calls"])
    started = time.perf_counter()
    beats = 0
    for _ in range(rounds):
        for i in range(0, connections, batch):
            chunk = refs[i : i + batch]
            await store.heartbeat_many(client, chunk, {"msg:heartbeat": len(chunk)})
            beats += len(chunk)
    elapsed = time.perf_counter() - started
    after = int((await client.info("commandstats"))["cmdstat_evalsha"]["calls"])
    calls = rounds * -(-connections // batch)
    return {
        "connections": connections,
        "batch": batch,
        "heartbeats": beats,
        "heartbeats_per_s": round(beats / elapsed),
        "evalsha_per_batch": round((after - before) / calls, 2),
        "redis_bytes_per_connection": round(used / connections),
    }


async def bench_e2e(
    port: int, clients: int, beats: int, interval: float, pid: int
) -> dict[str, Any]:
    """Real uvicorn + websockets clients: heartbeat ack latency under load."""
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model
    from websockets.asyncio.client import connect

    from presence.auth import mint_token

    def make_tokens() -> list[str]:
        users = get_user_model()
        tokens = []
        for i in range(clients):
            user, _ = users.objects.get_or_create(username=f"bench{i}")
            tokens.append(mint_token(user))
        return tokens

    tokens = await sync_to_async(make_tokens)()
    origin = f"http://127.0.0.1:{port}"
    sockets = []
    for token in tokens:
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws/presence/?token={token}",
            origin=origin,  # type: ignore[arg-type]
            compression=None,
            max_queue=None,
        )
        sockets.append(ws)
    for ws in sockets:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello", hello

    rss_connected = _rss_kib(pid)
    latencies: list[float] = []

    async def run(ws: Any, offset: float) -> None:
        await asyncio.sleep(offset)  # spread clients evenly over the interval, like real ones
        for n in range(beats):
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "heartbeat", "id": n}))
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "heartbeat.ack" and frame.get("id") == n:
                    break
            latencies.append(time.perf_counter() - sent)
            await asyncio.sleep(interval)

    started, cpu_before = time.perf_counter(), _cpu_seconds(pid)
    await asyncio.gather(*(run(ws, interval * i / clients) for i, ws in enumerate(sockets)))
    elapsed = time.perf_counter() - started
    server_cpu = _cpu_seconds(pid) - cpu_before
    for ws in sockets:
        await ws.close()
    return {
        "clients": clients,
        "heartbeats": len(latencies),
        "heartbeats_per_s": round(len(latencies) / elapsed),
        "ack_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "ack_p95_ms": round(_pct(latencies, 0.95) * 1000, 2),
        "ack_max_ms": round(max(latencies) * 1000, 2),
        "server_rss_kib_connected": rss_connected,
        "server_cpu_us_per_heartbeat": round(server_cpu / len(latencies) * 1e6),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=20000, help="store part: connections")
    parser.add_argument("--batch", type=int, default=500, help="store part: heartbeats per call")
    parser.add_argument(
        "--rounds", type=int, default=5, help="store part: heartbeats per connection"
    )
    parser.add_argument("--clients", type=int, default=500, help="e2e part: WebSocket clients")
    parser.add_argument("--beats", type=int, default=20, help="e2e part: heartbeats per client")
    parser.add_argument("--interval", type=float, default=0.5, help="e2e part: s between beats")
    parser.add_argument(
        "--global-events",
        action="store_true",
        help="e2e part: keep global join/leave events on (every connect fans out to all clients)",
    )
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()

    from config.embedded_redis import RedisServer, free_port

    tmp = Path(tempfile.mkdtemp(prefix="presence-bench-"))
    redis_server = RedisServer(tmp / "redis").start()
    db = tmp / "bench.sqlite3"
    _setup_django(redis_server.url, db)
    server = None
    try:
        results: dict[str, Any] = {
            "store": asyncio.run(bench_store(args.connections, args.batch, args.rounds))
        }
        print(json.dumps(results["store"]), flush=True)
        if not args.skip_e2e:
            subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
            port = free_port()
            env = {
                **os.environ,
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "PRESENCE_RATE_LIMIT": "1000",
                "PRESENCE_GLOBAL_EVENTS": "true" if args.global_events else "false",
                "PRESENCE_RATE_BURST": "1000",
            }
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "config.asgi:application",
                    "--port",
                    str(port),
                    "--ws-per-message-deflate",
                    "false",
                    "--lifespan",
                    "off",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
            )
            deadline = time.monotonic() + 20
            import socket

            while time.monotonic() < deadline:
                if server.poll() is not None:
                    raise SystemExit("bench: the uvicorn server exited; see its output above")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            rss_before = _rss_kib(server.pid)
            from presence import store

            store.reset_clients()
            e2e = asyncio.run(bench_e2e(port, args.clients, args.beats, args.interval, server.pid))
            e2e["server_rss_kib_idle"] = rss_before
            e2e["server_kib_per_connection"] = round(
                (e2e["server_rss_kib_connected"] - rss_before) / args.clients, 1
            )
            results["e2e"] = e2e
            print(json.dumps(e2e), flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        redis_server.stop()


if __name__ == "__main__":
    main()
